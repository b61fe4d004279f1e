"""Key tables: native parameter names <-> a family's Hugging Face names, one table per family.

A table is a list of (native pattern, HF pattern) pairs, `{i}` standing for the layer index (and `{e}`
for the expert index of a mixture-of-experts layer). The
same table drives import and export. `plan` checks a checkpoint's names and shapes against what the
config implies (from a model built on the meta device) and fails on a missing, unknown or
mis-shaped tensor before anything is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import CheckpointError


@dataclass
class KeyTable:
    family: str
    pairs: list[tuple[str, str]]
    # HF names that may be present and carry nothing we need (e.g. old rotary buffers).
    ignorable: tuple[str, ...] = ()
    # HF names dropped when the head is tied to the embedding (HF writes it or not).
    tied_head: str | None = None
    _to_native: list = field(default_factory=list, repr=False)
    _to_hf: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        def rx(p):
            return re.compile("^" + re.escape(p).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)") + "$")

        self._to_native = [(rx(h), n) for n, h in self.pairs]
        self._to_hf = [(rx(n), h) for n, h in self.pairs]
        self._ignorable = [rx(p) for p in self.ignorable]

    @staticmethod
    def _apply(table, name: str) -> str | None:
        for pattern, target in table:
            m = pattern.match(name)
            if m:
                for key, value in m.groupdict().items():
                    target = target.replace("{" + key + "}", value)
                return target
        return None

    def native_name(self, hf_name: str) -> str | None:
        return self._apply(self._to_native, hf_name)

    def hf_name(self, native_name: str) -> str:
        out = self._apply(self._to_hf, native_name)
        if out is None:
            raise CheckpointError(f"no {self.family} name for native tensor {native_name!r}")
        return out

    def is_ignorable(self, hf_name: str, tied: bool) -> bool:
        if tied and self.tied_head == hf_name:
            return True
        return any(p.match(hf_name) for p in self._ignorable)


def plan(
    found: dict[str, tuple[tuple[int, ...], str]],
    expected: dict[str, tuple[int, ...]],
    rename,
    where: str,
    ignorable=lambda name: False,
) -> dict[str, str]:
    """Check a checkpoint against the expected native tensors.

    found:    name in the checkpoint -> (shape, file it lives in)
    expected: native name -> shape (from the config)
    rename:   checkpoint name -> native name (None for a name the table does not know)
    Returns checkpoint name -> native name for every tensor to load. Raises CheckpointError naming
    the first unknown, mis-shaped or missing tensor.
    """
    mapping = {}
    for name in sorted(found):
        shape, file = found[name]
        native = rename(name)
        if native is None or native not in expected:
            if ignorable(name):
                continue
            raise CheckpointError(f"{file}: unknown tensor {name!r} for {where}")
        if tuple(shape) != tuple(expected[native]):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {list(shape)}, the config implies {list(expected[native])} "
                f"(config and weights disagree)"
            )
        mapping[name] = native
    missing = sorted(set(expected) - set(mapping.values()))
    if missing:
        raise CheckpointError(f"{where}: missing tensor for {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return mapping


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Native name -> shape of every tensor a model stores (build it on the meta device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
