"""benchmarks/gpu_check.py's parity part runs on CPU (fp32, eager FlexAttention) and names what it skips."""

from __future__ import annotations

import re

import torch

from benchmarks import gpu_check
from dlmarch.attention import attend


def test_gpu_check_cpu_parity_passes_and_names_what_it_skips(capsys):
    assert gpu_check.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for kind in gpu_check.MASK_KINDS:
        assert re.search(rf"\| parity +\| {kind} +\| sdpa +\| float32 +\| ok ", out), kind
        assert re.search(rf"\| parity +\| {kind} +\| flex +\| float32 +\| ok ", out), kind
    for section in ("speed", "mfu", "generate", "fsdp2"):
        assert f"skipped {section}: needs a CUDA device" in out
    assert "flash-attn needs CUDA" in out


def test_reference_attention_catches_a_wrong_mask():
    """The check can fail: attention that ignores the padding disagrees with the float64 oracle."""
    mask, real = gpu_check.make_mask("padding", 2, 16, "cpu")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    ref = gpu_check.reference_attention(q, k, v, mask.dense())
    good = attend(q, k, v, mask, "sdpa")
    wrong = attend(q, k, v, None, "sdpa")
    sel = real[:, None, :, None].expand_as(ref)
    assert (good.double() - ref)[sel].abs().max() < 1e-5
    assert (wrong.double() - ref)[sel].abs().max() > 1e-2
