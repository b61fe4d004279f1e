"""Data: JSONL rows -> token ids with an exact prompt/response boundary -> batches (padded or packed).

Rows are {"prompt": str, "response": str} or {"messages": [{"role", "content"}, ...]} (the last
assistant message is the response; everything before it, with the generation prompt, is the
prompt). With a chat template the prompt is the template of the earlier turns with
`add_generation_prompt=True`, and the response is the answer's text followed by EOS, as LLaDA's SFT
guideline trains it (ML-GSAI/LLaDA GUIDELINES.md: `answer<EOS><EOS>...`). `full_conversation=True`
renders the whole conversation with the template instead and takes the response as everything after
the prompt, as d1 and LIFT do (dllm-reasoning/d1, divelab/LIFT `SFT/sft_trainer.py`); with LLaDA's
template, which always ends with the assistant header, every response then ends with
`<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n` before its EOS, and that tail is trained.
Prompt and response are tokenized separately, so the boundary is exact in tokens whatever the
tokenizer merges.

EOS (the padding switch `eos_pad`, docs/masked-diffusion-sft.md):
- "train" (LLaDA, default): each response ends with EOS, and a padded batch fills every row to its
  length with more EOS that are part of the response: noised, attended, and in the loss. The model
  learns to fill the rest of a fixed-length canvas with EOS, which LLaDA's sampler relies on.
- "exclude": one EOS ends each response and is trained; padding is hidden (key padding) and carries
  no loss.
- "hidden" (Dream's recipe, ZHZisZZ/dllm `examples/dream/sft.py`: DataCollatorForSeq2Seq pads the labels
  with the pad id = EOS and the attention mask with 0): the padding EOS are targets like "train"
  (noised, in the loss) but hidden from attention like "exclude".
Either way `Batch.answer_mask` marks each document's own response (its answer through its first
EOS), without the trained padding: objectives whose per-token choices depend on the response
(GIFT's entropy reference, Blockwise SFT's blocks) read it, so that padding never changes them.
Packed rows (`pack=True`) hold whole documents back to back, each prompt + response + EOS, attention
kept inside each document (doc ids, positions restarting per document); the filler after the last
document is its own document and carries no loss. Packing has no padding to train, so it needs
`eos_pad="exclude"`; `check_layout` refuses the combination with "train".

A batch's order is a pure function of (seed, epoch, step), so resuming needs only the step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from dlmarch.errors import DlmarchError
from dlmarch.prompts import ChatTemplateError, render_chat

from .sources import open_source


class DataError(DlmarchError):
    pass


@dataclass
class Example:
    ids: list[int]  # prompt + response (response ends with EOS)
    prompt_len: int
    line: int  # 1-based line of the JSONL file
    label: int = -1  # the row's optional integer "class" (L2D's guidance class); -1: none


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_long: int = 0
    skipped_bad: int = 0
    tokens: int = 0

    def line(self) -> str:
        parts = [f"{self.kept}/{self.rows} rows kept", f"{self.tokens} tokens"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.dropped_long:
            parts.append(f"{self.dropped_long} dropped as too long")
        if self.skipped_bad:
            parts.append(f"{self.skipped_bad} bad rows skipped")
        return ", ".join(parts)


def render(tokenizer, row: dict, where: str, use_template: bool, full_conversation: bool = False) -> tuple[str, str, bool]:
    """(prompt text, response text, whether the tokenizer should add its special tokens to the prompt).

    With a template the response is the answer alone (LLaDA's guideline); full_conversation takes
    the rest of the rendered conversation instead (d1, LIFT; see the module docstring)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError(f"{where}: \"messages\" must be a non-empty list of {{role, content}}")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(f"{where}: no assistant message to train on")
        context, response = msgs[:last], msgs[last]["content"]
        if not context:
            raise DataError(f"{where}: the assistant message has no prompt before it")
    elif "prompt" in row and "response" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise DataError(f"{where}: \"prompt\" and \"response\" must be strings")
        context, response = [{"role": "user", "content": row["prompt"]}], row["response"]
    else:
        raise DataError(f"{where}: expected {{\"prompt\", \"response\"}} or {{\"messages\"}}, found keys {sorted(row)}")
    if not str(response).strip():
        raise DataError(f"{where}: empty response")
    if use_template:
        prompt_text = render_chat(tokenizer, context, add_generation_prompt=True)
        if not full_conversation:
            return prompt_text, response, False
        full = render_chat(tokenizer, context + [{"role": "assistant", "content": response}])
        if not full.startswith(prompt_text):
            raise DataError(f"{where}: the chat template does not render the prompt as a prefix of the conversation")
        return prompt_text, full[len(prompt_text):], False
    prompt_text = "\n".join(m["content"] for m in context)
    return prompt_text, response, True


def tokenize_row(tokenizer, row: dict, where: str, eos_id: int, use_template: bool,
                 full_conversation: bool = False) -> tuple[list[int], list[int]]:
    prompt_text, response_text, specials = render(tokenizer, row, where, use_template, full_conversation)
    prompt = tokenizer(prompt_text, add_special_tokens=specials).input_ids
    response = tokenizer(response_text, add_special_tokens=False).input_ids
    if specials and prompt and prompt[-1] == tokenizer.eos_token_id:
        prompt = prompt[:-1]  # tokenizers that append EOS to every text: the prompt does not end the sequence
    if not response:
        raise DataError(f"{where}: empty response")
    if response[-1] != eos_id:
        response = response + [eos_id]
    return prompt, response


def _kind(value) -> str:
    return "None" if value is None else {list: "a list", dict: "an object", int: "an int", float: "a float",
                                         bool: "a boolean"}.get(type(value), type(value).__name__)


def check_row(row, where: str) -> None:
    """The shape of one row, before any tokenizer or template sees it: an object with string
    "prompt" and "response", or a non-empty "messages" list of {role, content} strings; an optional
    integer "class". DataError naming the line and the field otherwise."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {_kind(row)}")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: \"messages\" must be a non-empty list of {{role, content}}, found {_kind(msgs)}")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: messages[{i}] must be an object with \"role\" and \"content\"")
            for key in ("role", "content"):
                if not isinstance(m[key], str):
                    raise DataError(f"{where}: messages[{i}].{key} must be a string, found {_kind(m[key])}")
    elif "prompt" in row and "response" in row:
        for key in ("prompt", "response"):
            if not isinstance(row[key], str):
                raise DataError(f"{where}: \"{key}\" must be a string, found {_kind(row[key])}")
    label = row.get("class", -1)
    if not isinstance(label, int) or isinstance(label, bool):
        raise DataError(f"{where}: \"class\" must be an integer, found {label!r}")


def load_examples(path: str | Path, tokenizer, max_length: int, *, eos_id: int, over_long: str = "drop",
                  skip_bad_rows: bool = False, use_template: bool | None = None,
                  full_conversation: bool = False, split: str = "train",
                  fields: dict[str, str] | None = None) -> tuple[list[Example], DataReport]:
    """Read and tokenize the rows of `path`: a JSONL, parquet, arrow or CSV file, a datasets folder or
    a cached hub dataset (trainers/sources.py, which `split` and the column renames `fields` go to).

    over_long: "drop" rows longer than max_length, or "truncate" their response (a prompt that alone
    does not fit, leaving no response, is an error either way). Bad rows (invalid JSON, wrong keys,
    empty response, prompt too long) raise a DataError naming the line, or are skipped and counted
    with skip_bad_rows.
    """
    if over_long not in ("drop", "truncate"):
        raise ValueError(f"over_long must be 'drop' or 'truncate', found {over_long!r}")
    path = Path(path)
    if use_template is None:
        use_template = bool(getattr(tokenizer, "chat_template", None))
    report, out = DataReport(), []
    try:
        source = open_source(path, split=split, fields=fields)
        lines = list(source.rows)
    except DlmarchError as e:
        raise DataError(str(e)) from None
    for n, row, error in lines:
        report.rows += 1
        where = f"{source.name}: {source.unit} {n}"
        try:
            if error:
                raise DataError(error)
            check_row(row, where)
            try:
                prompt, response = tokenize_row(tokenizer, row, where, eos_id, use_template, full_conversation)
            except ChatTemplateError as e:
                # The template is the model directory's code, run on this row: name both.
                raise DataError(f"{where}: {e}") from None
            if len(prompt) >= max_length:
                raise DataError(f"{where}: prompt of {len(prompt)} tokens leaves no room for a response "
                                f"within --max-length {max_length}")
            label = row.get("class", -1)
        except DataError:
            if not skip_bad_rows:
                raise
            report.skipped_bad += 1
            continue
        ids = prompt + response
        if len(ids) > max_length:
            if over_long == "drop":
                report.dropped_long += 1
                continue
            ids = ids[:max_length]
            report.truncated += 1
        out.append(Example(ids, len(prompt), n, label))
        report.kept += 1
        report.tokens += len(ids)
    if not out:
        raise DataError(f"{path}: no usable rows ({report.line()})")
    return out, report


@dataclass
class Batch:
    """One micro-batch. Every per-token tensor is (B, L).

    input_ids:      clean tokens.
    loss_mask:      tokens that objectives noise and score (responses, with trained EOS padding).
    seg:            index of the document (example) each token belongs to, in [0, num_docs); -1 for
                    filler/padding that belongs to no document.
    positions:      RoPE positions = position inside the document (restart per document when packed).
    doc_ids:        packed rows: per-row document ids for the attention mask (filler = -1); else None.
    attention_mask: padded rows with hidden padding: 1 = token, 0 = padding; else None.
    num_docs:       documents in the batch.
    data_tokens:    tokens of the examples themselves (prompt + response + EOS), for tokens/s.
    prompt_len:     (num_docs,) prompt length of each document.
    example_ids:    (num_docs,) a stable key of each document's example (its JSONL line).
    labels:         (num_docs,) each example's integer "class" (-1 when the row has none).
    epoch:          the epoch this batch belongs to (objectives that cycle through an example's
                    parts, like Blockwise SFT's blocks, key their choice on it).
    answer_mask:    each document's own response (answer through its first EOS): loss_mask without
                    the trained EOS padding. None: the same as loss_mask (read it through `answer`).
    """

    input_ids: Tensor
    loss_mask: Tensor
    seg: Tensor
    positions: Tensor
    doc_ids: Tensor | None
    attention_mask: Tensor | None
    num_docs: int
    data_tokens: int
    prompt_len: Tensor = field(default=None)
    example_ids: Tensor = field(default=None)
    labels: Tensor = field(default=None)
    epoch: int = 0
    answer_mask: Tensor | None = None

    @property
    def answer(self) -> Tensor:
        """(B, L) each document's own response tokens, never the trained padding."""
        return self.loss_mask if self.answer_mask is None else self.answer_mask

    def answer_lengths(self) -> Tensor:
        """(num_docs,) tokens of each document's own response."""
        seg = self.seg[self.answer]
        return torch.bincount(seg, minlength=self.num_docs)

    def to(self, device) -> "Batch":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, Tensor) else v
        return Batch(**kw)

    def model_inputs(self) -> dict:
        return dict(attention_mask=self.attention_mask, doc_ids=self.doc_ids, position_ids=self.positions)


def pad_batch(examples: list[Example], pad_id: int, eos_pad: str, length: int | None = None) -> Batch:
    """Rows padded on the right to `length` (default: the longest). See the module docstring for eos_pad."""
    L = length or max(len(e.ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    loss = torch.zeros(B, L, dtype=torch.bool)
    seg = torch.full((B, L), -1, dtype=torch.long)
    am = torch.ones(B, L, dtype=torch.long)
    answer = torch.zeros(B, L, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        loss[i, e.prompt_len:n] = True
        answer[i, e.prompt_len:n] = True
        seg[i, :n] = i
        if trains_padding(eos_pad):
            loss[i, n:] = True
            seg[i, n:] = i
        if eos_pad != "train":
            am[i, n:] = 0
    positions = torch.arange(L).expand(B, L).clone()
    attention_mask = None if eos_pad == "train" or bool(am.all()) else am
    return Batch(ids, loss, seg, positions, None, attention_mask, B, sum(len(e.ids) for e in examples),
                 torch.tensor([e.prompt_len for e in examples]), torch.tensor([e.line for e in examples]),
                 torch.tensor([e.label for e in examples]), answer_mask=answer)


def pack_rows(examples: list[Example], length: int) -> list[list[Example]]:
    """Greedy packing in order: each row takes examples until the next one does not fit."""
    rows, cur, used = [], [], 0
    for e in examples:
        if cur and used + len(e.ids) > length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += len(e.ids)
    if cur:
        rows.append(cur)
    return rows


def packed_batch(rows: list[list[Example]], length: int, pad_id: int) -> Batch:
    B = len(rows)
    ids = torch.full((B, length), pad_id, dtype=torch.long)
    loss = torch.zeros(B, length, dtype=torch.bool)
    seg = torch.full((B, length), -1, dtype=torch.long)
    doc = torch.full((B, length), -1, dtype=torch.long)
    positions = torch.zeros(B, length, dtype=torch.long)
    prompt_lens, keys, labels, d = [], [], [], 0
    for i, row in enumerate(rows):
        at = 0
        for j, e in enumerate(row):
            n = len(e.ids)
            ids[i, at:at + n] = torch.tensor(e.ids)
            loss[i, at + e.prompt_len:at + n] = True
            seg[i, at:at + n] = d
            doc[i, at:at + n] = j
            positions[i, at:at + n] = torch.arange(n)
            prompt_lens.append(e.prompt_len)
            keys.append(e.line)
            labels.append(e.label)
            at += n
            d += 1
        positions[i, at:] = torch.arange(length - at)
    return Batch(ids, loss, seg, positions, doc, None, d, sum(len(e.ids) for r in rows for e in r),
                 torch.tensor(prompt_lens), torch.tensor(keys), torch.tensor(labels))


EOS_PADS = ("train", "exclude", "hidden")


def trains_padding(eos_pad: str) -> bool:
    """Whether the layout's padding is trained (EOS targets): "train" and "hidden"."""
    return eos_pad in ("train", "hidden")


def padding_id(eos_pad: str, eos_id: int, pad_token_id: int | None) -> int:
    """The id that fills padded rows: EOS where the padding is trained, else the tokenizer's pad token
    (EOS when it has none)."""
    return eos_id if trains_padding(eos_pad) or pad_token_id is None else pad_token_id
RESPONSE_CUTOFFS = ("none", "batch")


def cut_responses(examples: list[Example], rng: random.Random) -> list[Example]:
    """Dream's per-batch cutoff (ZHZisZZ/dllm DreamSFTCollator.apply_perbatch_cutoff, after DreamLM/Dream's
    SFT trainer): one response length drawn uniformly from the batch's examples, every longer response
    cut to it (its EOS included: a cut response ends without one), so that the model does not learn that
    every answer fills the canvas. The draw is a pure function of (seed, step, micro-batch)."""
    kept = rng.choice([len(e.ids) - e.prompt_len for e in examples])
    return [e if len(e.ids) - e.prompt_len <= kept else Example(e.ids[:e.prompt_len + kept], e.prompt_len, e.line, e.label)
            for e in examples]


def check_layout(pack: bool, eos_pad: str) -> None:
    """Packing has no padding to train: `--pack` with `--eos-pad train` would silently train one EOS
    per document and no padding, so the combination is refused."""
    if pack and eos_pad != "exclude":
        raise DataError(f"--pack trains no EOS padding, so it cannot honour --eos-pad {eos_pad}; pass --eos-pad exclude "
                        "with --pack, or drop --pack")


class BatchSchedule:
    """Which examples form micro-batch `index` of optimizer step `step`, as a pure function.

    Each epoch shuffles the examples with (seed, epoch); padded micro-batches take `micro_batch_size`
    examples, packed ones `micro_batch_size` rows of `max_length`. A step consumes
    `micro_batches_per_step` (= grad_accum x world size) micro-batches; an epoch's incomplete last
    step is dropped.
    """

    def __init__(self, examples: list[Example], *, micro_batch_size: int, micro_batches_per_step: int, max_length: int,
                 pad_id: int, seed: int = 0, pack: bool = False, eos_pad: str = "train", pad_to: str = "batch",
                 shuffle: bool = True, response_cutoff: str = "none"):
        if eos_pad not in EOS_PADS:
            raise ValueError(f"eos_pad must be one of {EOS_PADS}, found {eos_pad!r}")
        if response_cutoff not in RESPONSE_CUTOFFS:
            raise ValueError(f"response_cutoff must be one of {RESPONSE_CUTOFFS}, found {response_cutoff!r}")
        if pack and response_cutoff != "none":
            raise DataError("--response-cutoff cuts the responses of a padded batch; it does not combine with --pack")
        if pad_to not in ("batch", "max"):
            raise ValueError(f"pad_to must be 'batch' or 'max', found {pad_to!r}")
        check_layout(pack, eos_pad)
        self.examples, self.mbs, self.per_step = examples, micro_batch_size, micro_batches_per_step
        self.max_length, self.pad_id, self.seed, self.pack = max_length, pad_id, seed, pack
        self.eos_pad, self.pad_to, self.shuffle, self.response_cutoff = eos_pad, pad_to, shuffle, response_cutoff
        self._epoch_cache: dict[int, list] = {}
        self.steps_per_epoch = len(self._units(0)) // (self.mbs * self.per_step)
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(self._units(0))} {'packed rows' if pack else 'examples'} are fewer than one step needs "
                            f"({self.mbs} x {self.per_step}); lower --batch-size or --grad-accum")

    def _units(self, epoch: int) -> list:
        """Examples (or packed rows) of an epoch, in order."""
        if epoch not in self._epoch_cache:
            order = list(range(len(self.examples)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            ex = [self.examples[i] for i in order]
            units = pack_rows(ex, self.max_length) if self.pack else ex
            self._epoch_cache = {epoch: units}  # one epoch at a time is enough
        return self._epoch_cache[epoch]

    def micro_batch(self, step: int, index: int) -> Batch:
        epoch, s = divmod(step, self.steps_per_epoch)
        units = self._units(epoch)
        start = (s * self.per_step + index) * self.mbs
        chunk = units[start:start + self.mbs]
        if self.pack:
            batch = packed_batch(chunk, self.max_length, self.pad_id)
        else:
            if self.response_cutoff == "batch":
                rng = random.Random((self.seed * 1_000_003 + step) * 7919 + index)
                chunk = cut_responses(chunk, rng)
            batch = pad_batch(chunk, self.pad_id, self.eos_pad, self.max_length if self.pad_to == "max" else None)
        batch.epoch = epoch
        return batch
