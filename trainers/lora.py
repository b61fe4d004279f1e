"""LoRA through peft: the model wrapped with adapters on the requested linear modules.

peft itself refuses only a target list that matches nothing; a run here refuses each target that
names no linear module of the model, before anything is written. What a LoRA run saves at the end
(adapter/, adapter-hf/) is trainers/export.py's and trainers/adapters.py's.
"""

from __future__ import annotations

from torch import nn

from dlmarch.errors import DlmarchError


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Every requested target must name at least one Linear module (peft only fails when none match)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    for t in targets:
        if t not in leaves and not any(n == t or n.endswith("." + t) for n in names):
            raise DlmarchError(f"--lora-targets: {t!r} matches no linear module of this model (its names: {', '.join(sorted(leaves))})")


def wrap_lora(model: nn.Module, args) -> nn.Module:
    """The peft wrapper of `model` (--lora-rank, --lora-alpha, default 2 * rank, --lora-dropout,
    --lora-targets); the adapters are injected into `model` in place."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, args.lora_targets)
    cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank, lora_dropout=args.lora_dropout,
                     target_modules=list(args.lora_targets))
    peft_model = get_peft_model(model, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = str(args.model)
    return peft_model


__all__ = ["check_lora_targets", "wrap_lora"]
