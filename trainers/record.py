"""The training record: what a finished run writes next to its model, defined once, here.

`model/training.json` is the trainer's record of how the model was trained (the method and its
objective's `training_info`, trainers/objectives/protocol.py). The library never reads it: what a
sampler should know about the model travels as model metadata instead, the `decoding` entry of the
native config.json (`dlmarch.sampling.cli.sampler_warnings` reads it), written from this record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

TRAINING_RECORD = "training.json"


@dataclass(frozen=True)
class TrainingRecord:
    """method: the trainer (sft, gift, blockwise, lift, l2d, ar). block_size / all_blocks: Blockwise
    SFT's block and whether every block was trained in one pass (the future cut off). sampler: the
    sampler call the model was trained for."""

    method: str
    block_size: int | None = None
    all_blocks: bool | None = None
    sampler: str | None = None

    @classmethod
    def of(cls, method: str, training_info: dict) -> "TrainingRecord":
        unknown = sorted(set(training_info) - {f.name for f in fields(cls)})
        if unknown:  # an objective recording a field the schema lacks: add it here first
            raise ValueError(f"training_info of {method} has fields outside the record's schema: {unknown}")
        return cls(method=method, **training_info)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def decoding(self) -> dict:
        """The model metadata a sampler reads (config.json's `decoding`): the block length it was
        trained with, whether it must be decoded block-causally, and the method."""
        out = {"trained_with": self.method}
        if self.block_size:
            out["block_length"] = self.block_size
        out["block_causal"] = bool(self.all_blocks)
        return out


__all__ = ["TRAINING_RECORD", "TrainingRecord"]
