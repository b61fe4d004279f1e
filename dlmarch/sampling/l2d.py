"""L2D's sampler (arXiv 2501.15781; SakanaAI/L2D `pipeline/decoding_util.autoregressive_decode` with
lad=True and `FlowLlamaForCausalLM.nstep_inference`): per generated token, the main path once (with a
KV cache), then an ODE in the flow space with only the diffusion path evaluated.

For each new token:
  1. x0 = noise_scale * N(0, I), drawn per token as (B, 1, F) in float32 (the first RNG draw of the
     token), then held in float64, the ODE's dtype.
  2. The ODE dx/dt = (x1_hat - x) / (1 - t) is integrated over torch.linspace(0, final_timestep,
     ode_steps) (float32 grid points; ode_steps - 1 intervals). x1_hat is the flow embedding of the
     token the diffusion path predicts at (x, t): argmax at x1 temperature 0, else a sample (or the
     probability-weighted average) at the x1 temperature of t + delta (delta: one grid step for
     euler/heun/rk, half of one for midpoint, 0 for the adaptive solvers). euler and midpoint are
     built in with torchdiffeq's arithmetic; the other solvers are torchdiffeq's own, and for those the
     velocity at t >= 1 is 0 without a model call, as the reference's.
  3. Classifier-free guidance (a model with classes and a class label): the velocity only is guided,
     v = w v_cond + (1 - w) v_null, the null class being `num_classes`; with a positive x1 temperature
     the conditional branch draws first.
  4. The token: one more conditional pass at t = final_timestep on the final x, then the reference's
     step_decode: logits / temperature (0 -> 1e-8), its top-p filter (which runs at top_p = 1.0 too),
     softmax, torch.multinomial. "Greedy" (temperature 0) is thus a draw from the RNG as well;
     do_sample=False takes the argmax instead and draws nothing.
Under the same torch seed and generator=None (the global RNG, as the reference uses), this is the
reference's sampler draw for draw.

Work done once, not per evaluation: the vocabulary's flow table (V x F), and every layer's
t-dependent modulation per ODE time (it depends on t and the class alone). Both guidance branches
run as one batched evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers import rope_tables
from ..masks import AttentionMask, Tokens
from ..models.l2d_schedule import BUILTIN_SOLVERS, SOLVERS, x1_temperature_schedule


class _Path:
    """The diffusion path at the current position: everything but x and t is fixed.

    q_index (n, 1): the query's index in the cache (for the causal mask); q_pos (n, 1): its position
    (for RoPE; left-padded rows count from their first token)."""

    def __init__(self, model, h_last: Tensor, kv: list, q_index: Tensor, q_pos: Tensor, kv_valid: Tensor | None,
                 class_labels: Tensor | None, cond_cache: dict):
        self.model, self.cache = model, cond_cache
        self.h, self.kv, self.labels = h_last, kv, class_labels
        n, T = q_index.shape[0], kv[0][0].shape[2]
        kv_tok = Tokens(pos=torch.arange(T, device=q_index.device).expand(n, T), valid=kv_valid)
        self.mask = AttentionMask("causal", Tokens(pos=q_index), kv_tok)
        self.q_pos = q_pos
        self.rope = rope_tables(model.main.config, q_pos)
        self.evaluations = 0

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits (n, V) at flow state x (n, F) and time t (a 0-dim tensor; the model sees its dtype)."""
        n = self.q_pos.shape[0]
        tt = t.reshape(1, 1).expand(n, 1).to(x.device)
        key = round(float(t), 12)
        if key not in self.cache:  # the modulations depend on t (and the class) only
            self.cache[key] = self.model.condition(tt, self.labels)
        self.evaluations += 1
        out = self.model.diffusion(self.h, self.kv, self.q_pos, self.mask, x[:, None].to(self.model.dtype), tt,
                                   cond=self.cache[key], rope=self.rope)
        return out[:, 0]


def _twice(t: Tensor | None) -> Tensor | None:
    return None if t is None else torch.cat([t, t])


def estimate_x1(logits: Tensor, table: Tensor, how: str, temperature, generator, normalize: bool = False,
                clamp: bool = False, flow_scale: float = 1.0) -> Tensor:
    """x1_hat (n, F) float64 from logits (n, V) and the float32 flow table (V, F), as the reference's
    get_weighted_flow_representation_for_logits. temperature: a float or a 0-dim tensor (schedules)."""
    if temperature <= 0:
        return table[logits.argmax(-1)].double()
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if how == "sample":
        x1 = table[torch.multinomial(probs, 1, replacement=True, generator=generator).view(-1)]
    elif clamp:  # the table row with the largest inner product with the expectation
        x1 = table[(probs @ table @ table.T).argmax(-1)]
    else:
        x1 = probs @ table
    if normalize and not clamp:
        x1 = F.normalize(x1, dim=-1) * flow_scale
    return x1.double()


def _integrate_builtin(velocity, x: Tensor, grid: Tensor, solver: str) -> Tensor:
    """euler / midpoint over the float32 grid, step for step as torchdiffeq's fixed-grid solvers (times
    formed in float32, handed to the velocity in float64)."""
    for t0, t1 in zip(grid[:-1], grid[1:]):
        dt = t1 - t0
        if solver == "euler":
            x = x + dt * velocity(t0.double(), x)
        else:
            half = 0.5 * dt
            k1 = velocity(t0.double(), x)
            x = x + dt * velocity((t0 + half).double(), x + k1 * half)
    return x


def _integrate_torchdiffeq(velocity, x: Tensor, grid: Tensor, solver: str, atol: float, rtol: float,
                           options: dict | None) -> Tensor:
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise ImportError(f"L2D solver {solver!r} runs through torchdiffeq: pip install 'dlmarch[l2d]' "
                          f"(or use euler / midpoint, built in)") from None
    return odeint(velocity, x, grid, method=solver, atol=atol, rtol=rtol, options=options)[-1]


def _decode_token(logits: Tensor, temperature: float, top_p: float, do_sample: bool, generator) -> Tensor:
    """The reference's step_decode (top_k = 0, no penalties): (B, V) -> (B,)."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / (temperature if temperature != 0.0 else 1e-8)
    if top_p > 0.0:  # the reference's top_p_processor; at top_p = 1.0 float rounding can still cut the tail
        sorted_logits, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(sorted_logits.softmax(dim=-1), dim=-1) > top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator).squeeze(-1)


def _class_labels(class_label, B: int, device) -> Tensor | None:
    """One label for the batch or one per row; None (or the reference's [None, ...]) = no class."""
    if class_label is None:
        return None
    if isinstance(class_label, Sequence) and not isinstance(class_label, str):
        if len(class_label) != B:
            raise ValueError(f"class_label: one per row ({B}), found {len(class_label)}")
        if any(c is None for c in class_label):
            if not all(c is None for c in class_label):
                raise ValueError("class_label: every row needs a class, or none does")
            return None
    labels = torch.as_tensor(class_label, device=device).long()
    return labels.expand(B).clone() if labels.dim() == 0 else labels.view(B)


@dataclass
class _Ode:
    """The ODE options of one generate_l2d call: the arguments, else the model's L2DConfig."""

    steps: int  # grid points
    solver: str
    atol: float
    rtol: float
    options: dict | None
    x1_temp_at: Callable  # time -> x1 temperature
    x1_estimation: str
    final_timestep: float


def _resolve_ode(cfg, ode_steps, solver, atol, rtol, ode_options, x1_temperature, x1_estimation, final_timestep) -> _Ode:
    """The ODE options: each argument left at None from the config (solver "heun" is torchdiffeq's heun2)."""
    solver = solver or cfg.solver
    solver = "heun2" if solver == "heun" else solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown L2D solver {solver!r} (supported: {', '.join(SOLVERS)})")
    return _Ode(ode_steps or cfg.ode_steps, solver, cfg.ode_atol if atol is None else atol,
                cfg.ode_rtol if rtol is None else rtol, cfg.ode_options if ode_options is None else ode_options,
                x1_temperature_schedule(cfg.temperature if x1_temperature is None else x1_temperature),
                x1_estimation or cfg.x1_estimation, cfg.final_timestep if final_timestep is None else final_timestep)


def _check(prompt: Tensor, max_new_tokens: int, ode_steps: int) -> None:
    """ValueError naming the argument that cannot work."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (batch, length) with at least one token, found {tuple(prompt.shape)}")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, found {max_new_tokens}")
    if ode_steps < 2:
        raise ValueError(f"ode_steps must be at least 2 (grid points), found {ode_steps}")


def _guidance(cfg, class_label, guidance: float | None, B: int, device) -> tuple[Tensor | None, float | None]:
    """(class labels (B,) or None, the guidance weight w, None when unguided). The reference guides
    whenever a class is given, w = 1 included; w defaults to the config's, else 1.0."""
    labels = _class_labels(class_label, B, device)
    if labels is not None and not cfg.num_classes:
        raise ValueError("class_label / guidance need a model trained with num_classes")
    if labels is None and guidance is not None:
        raise ValueError("guidance needs a class_label")
    if labels is not None and guidance is None:
        guidance = cfg.guidance if cfg.guidance is not None else 1.0
    return labels, guidance


@dataclass
class _Plan:
    """One generate_l2d call, resolved: what each token reads."""

    model: object
    ode: _Ode
    grid: Tensor  # the ODE's time grid, float32 as the reference's
    delta: Tensor | float  # the x1 temperature is read at t + delta (the reference's timesteps_delta)
    boundary: bool  # the solver evaluates at t = 1, where the velocity is 0
    table: Tensor  # the vocabulary's flow table (V, F), float32
    labels: Tensor | None  # (B,) class labels
    guidance: float | None  # w; None: unguided
    guide_final_logits: bool
    generator: torch.Generator | None
    device: torch.device
    cond_cache: dict = field(default_factory=dict)  # modulations per ODE time
    token_cache: dict = field(default_factory=dict)  # the token's conditional pass under guidance: its own labels

    def __post_init__(self):
        nc = self.model.config.num_classes  # the null class
        self.branch_labels = None if self.guidance is None else torch.cat([self.labels, torch.full_like(self.labels, nc)])


def _plan(model, ode: _Ode, labels, guidance, guide_final_logits: bool, generator, device) -> _Plan:
    """The work done once per call: the flow table and the ODE's time grid."""
    table = model.flow_table().float()
    grid = torch.linspace(0.0, ode.final_timestep, ode.steps, device=device)  # float32, as the reference's
    delta = {"euler": grid[-1] - grid[-2], "midpoint": (grid[-1] - grid[-2]) / 2}.get(ode.solver, 0.0)
    if ode.solver in ("heun2", "heun3", "rk4"):
        delta = grid[-1] - grid[-2]
    return _Plan(model, ode, grid, delta, ode.solver not in BUILTIN_SOLVERS, table, labels, guidance,
                 guide_final_logits, generator, device)


@dataclass
class _Main:
    """The main path after the tokens so far: per-layer keys/values, the last hidden state (B, 1, D), the
    last position (B, 1) and the attention mask (B, T) (None without padding)."""

    kv: list
    h_last: Tensor
    step_pos: Tensor
    am: Tensor | None


def _prefill(main, prompt: Tensor, attention_mask: Tensor | None, device) -> _Main:
    """The main path on the prompt (B, P), once, with its KV cache."""
    am = None if attention_mask is None else attention_mask.to(device).long()
    # Positions count from each row's first token (0 on its left padding), as the reference's.
    pos = None if am is None else (am.cumsum(-1) - 1).clamp(min=0)
    out = main(prompt, am, position_ids=pos, return_kv=True, output_hidden=True, compute_logits=False)
    step_pos = (torch.arange(prompt.shape[1], device=device).expand(prompt.shape[0], -1) if pos is None else pos)[:, -1:]
    return _Main(out.kv, out.hidden[:, -1:], step_pos, am)


def _feed(main, state: _Main, nxt: Tensor) -> None:
    """The main path on the tokens nxt (B,): their keys/values join the cache."""
    if state.am is not None:
        state.am = torch.cat([state.am, torch.ones(nxt.shape[0], 1, dtype=state.am.dtype, device=state.am.device)], 1)
    state.step_pos = state.step_pos + 1
    out = main(nxt[:, None], state.am, position_ids=state.step_pos, past_kv=state.kv, return_kv=True,
               output_hidden=True, compute_logits=False)
    state.kv, state.h_last = out.kv, out.hidden


def _velocity(plan: _Plan, path: _Path, B: int):
    """dx/dt = (x1_hat - x) / (1 - t) at (t, x (B, F) float64); under guidance w v_cond + (1 - w) v_null."""
    cfg, table, generator, guidance = plan.model.config, plan.table, plan.generator, plan.guidance
    boundary, delta, x1_temp_at, how = plan.boundary, plan.delta, plan.ode.x1_temp_at, plan.ode.x1_estimation
    guided = guidance is not None

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        if boundary and t >= 1:
            return torch.zeros_like(x)
        x1_temp = x1_temp_at(t + delta)
        logits = path.logits(torch.cat([x, x]) if guided else x, t)
        # Conditional branch first: with a positive x1 temperature each branch draws in turn.
        x1 = torch.cat([estimate_x1(part, table, how, x1_temp, generator, cfg.normalize_x1, cfg.clamp_x1,
                                    cfg.flow_scale) for part in logits.split(B)])
        v = (x1 - (torch.cat([x, x]) if guided else x)) / (1 - t)
        if guided:
            vc, vu = v.split(B)
            v = guidance * vc + (1 - guidance) * vu
        return v

    return velocity


def _token_logits(plan: _Plan, state: _Main) -> tuple[Tensor, int]:
    """The next token's logits (B, V): the ODE from fresh noise, then one more pass at the final time.
    Also returns the diffusion path's evaluations (batched passes)."""
    model, cfg, ode, guidance = plan.model, plan.model.config, plan.ode, plan.guidance
    h_last, kv, step_pos = state.h_last, state.kv, state.step_pos
    B = h_last.shape[0]
    q_index = torch.full((B, 1), kv[0][0].shape[2] - 1, device=plan.device)
    valid = None if state.am is None else state.am.bool()
    if guidance is not None:  # rows [conditional; null class], one batched pass
        path = _Path(model, _twice(h_last), [(_twice(k), _twice(v)) for k, v in kv], _twice(q_index),
                     _twice(step_pos), _twice(valid), plan.branch_labels, plan.cond_cache)
    else:
        path = _Path(model, h_last, kv, q_index, step_pos, valid, None, plan.cond_cache)
    velocity = _velocity(plan, path, B)
    x = (torch.randn(B, 1, cfg.flow_dim, device=plan.device, generator=plan.generator) * cfg.noise_scale)[:, 0].double()
    if ode.solver in BUILTIN_SOLVERS:
        x = _integrate_builtin(velocity, x, plan.grid, ode.solver)
    else:
        x = _integrate_torchdiffeq(velocity, x, plan.grid, ode.solver, ode.atol, ode.rtol, ode.options)
    # The token's logits: one more pass at the final time, conditional only (the reference's).
    if guidance is not None and plan.guide_final_logits:
        fc, fu = path.logits(torch.cat([x, x]), plan.grid[-1]).split(B)
        final = guidance * fc + (1 - guidance) * fu
    elif guidance is not None:
        final = _Path(model, h_last, kv, q_index, step_pos, valid, plan.labels, plan.token_cache).logits(x, plan.grid[-1])
        path.evaluations += 1
    else:
        final = path.logits(x, plan.grid[-1])
    return final, path.evaluations


@torch.no_grad()
def generate_l2d(model, prompt: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 64, *,
                 ode_steps: int | None = None, solver: str | None = None, temperature: float = 0.0,
                 do_sample: bool = True, top_p: float = 1.0, x1_temperature: float | str | None = None,
                 x1_estimation: str | None = None, final_timestep: float | None = None,
                 class_label: int | Sequence[int] | Tensor | None = None, guidance: float | None = None,
                 guide_final_logits: bool = False, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, atol: float | None = None, rtol: float | None = None,
                 ode_options: dict | None = None, progress: bool = False, stats: dict | None = None) -> Tensor:
    """Prompt (B, P) [+ left-padding attention_mask] -> prompt + up to max_new_tokens tokens (B, P + n).

    ode_steps (grid points), solver (euler, midpoint, or a torchdiffeq method: heun2, rk4,
    adaptive_heun, bosh3, dopri5, ...), atol / rtol / ode_options, x1_temperature (a number or
    "polynomial_<p>_<end>"), x1_estimation and final_timestep default to the model's L2DConfig, which
    holds them under the reference's names when imported. temperature / top_p / do_sample: the token's
    decoding (see the module docstring). class_label (one, or one per row) and guidance (w; default the
    config's, else 1.0) select classifier-free guidance of the velocity; guide_final_logits=True also
    guides the token's logits (w cond + (1 - w) null; the reference reads the token from the
    conditional logits alone). generator=None draws from torch's global RNG, as the reference. Rows
    that emit eos_token_id are padded with it afterwards (the sampled tokens are still fed, as the
    reference does); decoding stops when every row has. `stats` receives 'main_calls',
    'diffusion_evaluations' (batched passes of the diffusion path) and 'tokens'.
    """
    cfg = model.config
    ode = _resolve_ode(cfg, ode_steps, solver, atol, rtol, ode_options, x1_temperature, x1_estimation, final_timestep)
    _check(prompt, max_new_tokens, ode.steps)
    device = model.device
    prompt = prompt.to(device)
    B = prompt.shape[0]
    labels, guidance = _guidance(cfg, class_label, guidance, B, device)
    plan = _plan(model, ode, labels, guidance, guide_final_logits, generator, device)
    state, calls, evaluations = _prefill(model.main, prompt, attention_mask, device), 1, 0
    tokens = [prompt]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tokens", leave=False)
    for i in steps:
        final, n_evaluations = _token_logits(plan, state)
        evaluations += n_evaluations
        nxt = _decode_token(final, temperature, top_p, do_sample, generator)
        shown = nxt
        if eos_token_id is not None:
            shown = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done = done | (nxt == eos_token_id)
        tokens.append(shown[:, None])
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        _feed(model.main, state, nxt)
        calls += 1
    if stats is not None:
        stats.update(main_calls=calls, diffusion_evaluations=evaluations, tokens=len(tokens) - 1)
    return torch.cat(tokens, 1)
