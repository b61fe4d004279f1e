"""`python -m trainers.grpo`: diffu-GRPO, reinforcement learning after SFT (d1, arXiv 2504.12216;
docs/grpo.md), on the shared loop: LoRA or full fine-tuning, torchrun, checkpoints, --resume.

--data holds the task's rows (GSM8K {"question", "answer"}, MATH-500 {"problem", "solution" or
"answer"}, Countdown {"numbers", "target"} or d1's {"input", "output"}, Sudoku {"puzzle",
"solution"} or d1's CSV); each row becomes d1's training prompt (diffu-grpo/data_utils.py) and is
scored by d1's rewards for the task (trainers/tasks/rewards.py). --batch-size counts prompts per
micro-batch; each gets --num-generations completions.
"""

from __future__ import annotations

import sys

from dlmarch.errors import DlmarchError
from dlmarch.sampling.options import add_decoding_arguments, options_from_args

from .cli import run
from .data import BatchSchedule, DataReport, Example
from .objectives.grpo import GRPOObjective, GRPOSettings, frozen_copy
from .tasks import get_task
from .tasks.rewards import REWARDS, grpo_user_message, score_completions

TASKS = tuple(REWARDS)


def add_options(p):
    # d1's DiffuGRPOConfig defaults (diffu-grpo/diffu_grpo_config.py); its runs' values are in
    # configs/diffu-grpo-llada-8b.yaml.
    p.set_defaults(lr=1e-6)
    g = p.add_argument_group("grpo")
    g.add_argument("--task", choices=TASKS, required=False, help="the rows' task: its prompt and d1's rewards")
    g.add_argument("--system-prompt", choices=["d1", "none"], default="d1",
                   help="d1's format instructions before each question, or the question alone (small models)")
    g.add_argument("--max-prompt-length", type=int, default=256, help="longer prompts keep their last tokens (d1)")
    g.add_argument("--num-generations", type=int, default=8, help="completions per prompt (the group)")
    g.add_argument("--num-iterations", type=int, default=1, help="mu: optimizer steps per batch of rollouts")
    g.add_argument("--epsilon", type=float, default=0.2, help="clipping of the probability ratio")
    g.add_argument("--beta", type=float, default=0.04, help="weight of the KL to the reference (0: no reference)")
    g.add_argument("--p-mask-prompt", type=float, default=0.3, help="share of prompt tokens masked in the log-prob estimate")
    g.add_argument("--no-random-masking", action="store_true", help="mask seed 42 at every iteration (d1: random)")
    g.add_argument("--scale-rewards", action="store_true",
                   help="divide advantages by the group's std + 1e-4 (TRL's GRPO); d1 does not")
    g = p.add_argument_group("rollouts")
    g.add_argument("--generation-batch-size", type=int, default=0, help="completions sampled at once (0: all)")
    add_decoding_arguments(p, "Rollouts decode with the model's own sampler (LLaDA's generate, Dream's "
                              "generate_dream), these options the same as `python -m dlmarch.generate`'s; left out, "
                              "d1's rollout settings (gen_length 256, block_length 64, steps 64, temperature 0.9), "
                              "then the sampler's reference defaults. --seed is the run's.", exclude=("seed",))


def check_options(args) -> None:
    def need(ok, flag, what):
        if not ok:
            raise DlmarchError(f"{flag} {what}")
    need(args.task is not None, "--task", "is required (one of " + ", ".join(TASKS) + ")")
    need(args.num_generations >= 2, "--num-generations", f"must be at least 2 (a group), found {args.num_generations}")
    need(args.num_iterations >= 1, "--num-iterations", f"must be at least 1, found {args.num_iterations}")
    need(0 <= args.p_mask_prompt < 1, "--p-mask-prompt", f"must be in [0, 1), found {args.p_mask_prompt}")
    need(args.epsilon >= 0 and args.beta >= 0, "--epsilon/--beta", "must be non-negative")
    need(args.max_prompt_length >= 1, "--max-prompt-length", f"must be positive, found {args.max_prompt_length}")
    need(not args.pack, "--pack", "does not apply: diffu-GRPO samples from prompts")


class RepeatedSchedule:
    """Each step's micro-batches of prompts held for mu consecutive steps: step s reads the prompts
    of step s // mu of the inner schedule (TRL's sampler repeats a batch num_iterations times)."""

    def __init__(self, inner: BatchSchedule, mu: int):
        self.inner, self.mu = inner, mu
        self.steps_per_epoch = inner.steps_per_epoch * mu

    def micro_batch(self, step: int, index: int):
        return self.inner.micro_batch(step // self.mu, index)


def prompt_ids(tokenizer, text: str, use_template: bool) -> list[int]:
    if use_template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False).input_ids
    return tokenizer(text, add_special_tokens=True).input_ids


class GRPOData:
    """The task's rows (kept for the rewards, keyed by row number) and the prompts' schedule."""

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def __call__(self, args, tokenizer, eos_id, pad_id, world):
        check_options(args)
        task = get_task(args.task)
        rows = task.load(args.data)
        use_template = bool(getattr(tokenizer, "chat_template", None)) and not args.no_chat_template
        report, examples = DataReport(), []
        for n, row in enumerate(rows, 1):
            report.rows += 1
            try:
                text = grpo_user_message(args.task, row, args.system_prompt == "d1")
            except (KeyError, TypeError, ValueError) as e:
                raise DlmarchError(f"{args.data}: row {n}: not a {args.task} row ({type(e).__name__}: {e})") from None
            ids = prompt_ids(tokenizer, text, use_template)
            if len(ids) > args.max_prompt_length:
                ids = ids[-args.max_prompt_length:]  # d1 keeps the prompt's end
                report.truncated += 1
            self.rows[n] = row
            examples.append(Example(ids, len(ids), n))
            report.kept += 1
            report.tokens += len(ids)
        schedule = BatchSchedule(examples, micro_batch_size=args.batch_size, micro_batches_per_step=args.grad_accum * world,
                                 max_length=args.max_prompt_length, pad_id=pad_id, seed=args.seed, eos_pad="exclude")
        return RepeatedSchedule(schedule, args.num_iterations), report


def settings(args) -> GRPOSettings:
    return GRPOSettings(task=args.task, num_generations=args.num_generations, num_iterations=args.num_iterations,
                        epsilon=args.epsilon, beta=args.beta, p_mask_prompt=args.p_mask_prompt,
                        random_masking=not args.no_random_masking, scale_rewards=args.scale_rewards,
                        decoding=options_from_args(args), generation_batch_size=args.generation_batch_size)


def make_objective(data: GRPOData):
    def objective(ctx):
        args, model = ctx.args, ctx.model
        s = settings(args)
        if model.kind != "masked-diffusion" or model.sampler not in ("generate", "generate_dream"):
            raise DlmarchError(f"{args.model}: diffu-GRPO samples masked-diffusion models (LLaDA, LLaDA-MoE, Dream); "
                               f"a {model.config.family} model has sampler {model.sampler}")
        try:
            GRPOObjective.resolve_rollouts(model, s)  # every rollout option checked before the first step
        except ValueError as e:
            raise DlmarchError(str(e)) from None
        ref = frozen_copy(model) if (s.beta != 0.0 and not args.lora_rank) else None
        names = [n for n, _ in REWARDS[args.task]]
        return GRPOObjective(s, tokenizer=ctx.tokenizer, rows=data.rows, mask_id=ctx.mask_id, eos_id=ctx.eos_id,
                             pad_id=ctx.eos_id, reward_fn=lambda texts, rows: score_completions(args.task, texts, rows),
                             reward_names=names, ref_model=ref)
    return objective


def main(argv=None) -> int:
    data = GRPOData()
    return run("grpo", __doc__, add_options, make_objective(data), argv, data_loader=data)


if __name__ == "__main__":
    sys.exit(main())
