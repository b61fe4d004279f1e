"""What a run reads before it trains: the model and tokenizer, their token ids checked against each
other, and the data its steps read (the batch schedule and, with --eval-data, the validation set).

Every check here runs before the output directory is written (trainers/rundir.py `record_run`), so
a bad input leaves nothing behind.
"""

from __future__ import annotations

from typing import Callable

import torch

from dlmarch.dtypes import parse_dtype
from dlmarch.errors import DlmarchError
from dlmarch.hub import local_model_dir
from dlmarch.registry import load_pretrained

from .data import BatchSchedule, load_examples, padding_id
from .sources import field_map
from .validation import Validation


def load_model_and_tokens(args, needs_mask: bool, model_loader, device):
    """(tokenizer, model, mask_id, eos_id, pad_id), every token id checked against the tokenizer."""
    from dlmarch.tokenizers import load_tokenizer

    model_dir = local_model_dir(args.model, "--model")  # a hub id: its snapshot in the hub cache
    tokenizer = load_tokenizer(model_dir)  # one line naming the directory when it cannot be read
    dtype = parse_dtype(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if (args.lora_rank and device.type == "cuda") else torch.float32
    overrides = {"attn_backend": args.attn_backend} if args.attn_backend else {}
    model = model_loader(args, device, dtype) if model_loader else load_pretrained(model_dir, dtype=dtype, device=device, **overrides)
    cfg = model.token_config  # the model protocol: the config holding the token ids
    mask_id = None
    if needs_mask:
        mask_id = getattr(cfg, "mask_token_id", None)
        if mask_id is None:
            raise DlmarchError(f"{args.model}: a {cfg.family} model has no mask token; this objective trains masked-diffusion models")
        tok_mask = tokenizer.mask_token_id
        if tok_mask is None and mask_id >= len(tokenizer):
            raise DlmarchError(f"{args.model}: the tokenizer has no mask token (the model's mask id {mask_id} is outside its "
                               f"vocabulary of {len(tokenizer)})")
        if tok_mask is not None and tok_mask != mask_id:
            raise DlmarchError(f"{args.model}: the tokenizer's mask token id {tok_mask} differs from the model's {mask_id}")
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else cfg.eos_token_id
    if eos_id is None:
        raise DlmarchError(f"{args.model}: neither the tokenizer nor the config names an EOS token")
    pad_id = padding_id(args.eos_pad, eos_id, tokenizer.pad_token_id)
    return tokenizer, model, mask_id, eos_id, pad_id


def read_examples(args, tokenizer, eos_id: int, path):
    """--data (or --eval-data) as examples of {prompt, response} / {messages} rows (trainers/data.py)."""
    return load_examples(path, tokenizer, args.max_length, eos_id=eos_id, over_long=args.over_long,
                         skip_bad_rows=args.skip_bad_rows, use_template=False if args.no_chat_template else None,
                         full_conversation=args.render_full_conversation,
                         split=getattr(args, "data_split", "train"), fields=field_map(args))


def load_data(args, tokenizer, eos_id: int, pad_id: int, world: int, example_loader: Callable = read_examples,
              data_loader: Callable | None = None) -> tuple[object, object, Validation | None]:
    """(schedule, DataReport, validation or None): data_loader's schedule when a recipe has one
    (diffu-GRPO), else a BatchSchedule over example_loader's --data, with --eval-data's examples as
    the validation set."""
    if data_loader is not None:
        schedule, report = data_loader(args, tokenizer, eos_id, pad_id, world)
        return schedule, report, None
    examples, report = example_loader(args, tokenizer, eos_id, args.data)
    validation = None
    if getattr(args, "eval_data", None):
        validation = Validation(example_loader(args, tokenizer, eos_id, args.eval_data)[0], args, pad_id)
    schedule = BatchSchedule(examples, micro_batch_size=args.batch_size, micro_batches_per_step=args.grad_accum * world,
                             max_length=args.max_length, pad_id=pad_id, seed=args.seed, pack=args.pack,
                             eos_pad=args.eos_pad, pad_to=args.pad_to,
                             response_cutoff=getattr(args, "response_cutoff", "none"))
    return schedule, report, validation


__all__ = ["load_model_and_tokens", "read_examples", "load_data"]
