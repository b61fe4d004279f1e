"""Wording shared by the report's tables and its findings: percentages, intervals, comparisons, and what
differs from each paper's setting."""

from __future__ import annotations

from .stats import difference_interval


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def span(ci) -> str:
    return f"[{pct(ci[0])}, {pct(ci[1])}]"


def compare(a: dict, b: dict, name_a: str, name_b: str) -> str:
    """'a beats / falls below / is not distinguishable from b': with each one's runs (`scores`, one per
    seed), Student's two-sample t-test at 5% (the difference's 95% interval, the test the design's
    detectable difference is computed for); without them, disjoint or overlapping intervals."""
    if len(a.get("scores", ())) >= 2 and len(b.get("scores", ())) >= 2:
        diff, ci = difference_interval(a["scores"], b["scores"])
        said = f"difference {100 * diff:+.1f} points {span(ci)}, t-test at 5%"
        if ci[0] > 0:
            return f"{name_a} beats {name_b} ({said})"
        if ci[1] < 0:
            return f"{name_a} falls below {name_b} ({said})"
        return f"{name_a} is not distinguishable from {name_b} ({said}: the interval holds 0)"
    if a["ci95"][0] > b["ci95"][1]:
        return f"{name_a} beats {name_b} (intervals disjoint)"
    if a["ci95"][1] < b["ci95"][0]:
        return f"{name_a} falls below {name_b} (intervals disjoint)"
    return f"{name_a} is not distinguishable from {name_b} (intervals overlap)"


# What differs from each paper's setting, said where its effect does not appear here.
PAPER_SETTING = {  # the settings of configs/*.yaml, each sourced there
    "gift": "GIFT fine-tunes the pretrained LLaDA-8B-Instruct in d1's setting (LoRA r 128, lr 1e-5)",
    "lift": "LIFT fine-tunes the pretrained LLaDA-8B-Instruct (the LIFT repository's run script: lr 5e-6, 20 epochs)",
    "blockwise": "Blockwise SFT fine-tunes the pretrained LLaDA-8B-Instruct (LoRA r 256, 200 steps of 32 rows) on "
                 "reasoning responses that span many 32-token blocks; here a response spans 2-5 blocks",
    "l2d": "L2D adds a LoRA diffusion path to a pretrained Llama-3.2-1B-Instruct trained on a large mixture; here the "
           "main model is a small Llama taught one task",
    "rl": "GIFT's Figure 3 runs d1's diffu-GRPO on LLaDA-8B-Instruct for thousands of steps; here a few dozen steps of a "
          "toy-sized group",
}
