"""`python -m trainers.pt`: masked-diffusion (continued) pretraining on {"text"} rows, LLaDA's recipe
(Nie et al. 2025, sec. 2.2 and B.1; ML-GSAI/LLaDA GUIDELINES.md; dllm's `pt.py` runs the same).

The rows' texts are tokenized (no special tokens), each followed by EOS, concatenated into one token
stream and cut into rows of exactly --max-length tokens (the incomplete tail is dropped), as LLaDA's
fixed 4096-token sequences and the `group_texts` of HF's run_clm/dllm are. A row attends to all of
itself, documents included, as in LLaDA's guideline (`model(input_ids=noisy_batch)`, no mask).
The objective (trainers/objectives/pt.py): t per row, CE / p over masked tokens divided by B x L,
and 1% of the micro-batches cut to a random length (--random-length-fraction).
"""

from __future__ import annotations

import bisect
import sys
from functools import partial

from dlmarch.errors import DlmarchError

from .cli import run
from .options import fraction, limited
from .data import DataError, DataReport, Example, _kind
from .objectives.pt import RANDOM_LENGTH_FRACTION, pretrain
from .sources import field_map, open_source


def add_options(p):
    g = p.add_argument_group("pt")
    limited(g.add_argument("--random-length-fraction", type=float, default=RANDOM_LENGTH_FRACTION,
                           help="share of micro-batches cut to a length drawn uniformly from [1, --max-length] "
                                "(LLaDA: 1%%)"), fraction)


def load_text(args, tokenizer, eos_id: int, path) -> tuple[list[Example], DataReport]:
    """Rows of {"text"} -> examples of exactly --max-length tokens, every token trained (prompt_len 0).
    An example's `line` is the row its first token comes from."""
    try:
        source = open_source(path, split=getattr(args, "data_split", "train"), fields=field_map(args))
        rows = list(source.rows)
    except DlmarchError as e:  # the sources' one-line errors
        raise DataError(str(e)) from None
    report, stream, starts, numbers = DataReport(), [], [], []
    for n, row, error in rows:
        report.rows += 1
        where = f"{source.name}: {source.unit} {n}"
        try:
            if error:
                raise DataError(error)
            if not isinstance(row, dict) or "text" not in row:
                found = f"keys {sorted(row)}" if isinstance(row, dict) else _kind(row)
                raise DataError(f"{where}: expected {{\"text\": string}} (or --text-field), found {found}")
            if not isinstance(row["text"], str):
                raise DataError(f"{where}: \"text\" must be a string, found {_kind(row['text'])}")
            if not row["text"].strip():
                raise DataError(f"{where}: empty text")
        except DataError:
            if not args.skip_bad_rows:
                raise
            report.skipped_bad += 1
            continue
        starts.append(len(stream))
        numbers.append(n)
        stream.extend(tokenizer(row["text"], add_special_tokens=False).input_ids + [eos_id])
        report.kept += 1
    L = args.max_length
    if len(stream) < L:
        raise DataError(f"{source.name}: {len(stream)} tokens are fewer than one row of --max-length {L}")
    examples = [Example(stream[i:i + L], 0, numbers[bisect.bisect_right(starts, i) - 1])
                for i in range(0, len(stream) - L + 1, L)]
    report.tokens = len(examples) * L
    return examples, report


def objective(ctx):
    return partial(pretrain, mask_id=ctx.mask_id, random_length_fraction=ctx.args.random_length_fraction)


def main(argv=None) -> int:
    return run("pt", __doc__, add_options, objective, argv, example_loader=load_text)


if __name__ == "__main__":
    sys.exit(main())
