"""LLaDA-MoE and LLaDA2 under the training objectives, on the tiny fixtures: every objective gives a
finite loss whose gradient reaches the attention, the router and the chosen experts; one SFT step
lowers the loss; LoRA wraps attention and expert projections and its adapter exports under the
reference's module names. Neither reference's training code (ZHZisZZ/dllm's MDLM and BD3LM trainers)
adds the router's load-balancing loss (`output_router_logits` stays False), so neither do we."""

import json
from types import SimpleNamespace

import pytest
import torch

from dlmarch import AutoModel
from tests.helpers import FIXTURES, random_examples
from trainers.data import pack_rows, packed_batch, pad_batch
from trainers.objectives.blockwise import all_blocks, blockwise
from trainers.objectives.gift import gift
from trainers.objectives.lift import lift
from trainers.objectives.sft import sft

# (fixture, mask id, eos id) of each family's tiny checkpoint
FAMILIES = {"lladamoe": ("lladamoe-tiny", 156, 153), "llada2_moe": ("llada2-tiny", 188, 185)}


def load(family):
    name, mask, eos = FAMILIES[family]
    return AutoModel.from_pretrained(FIXTURES / name, dtype=torch.float32, mask_token_id=mask), mask, eos


def batches(eos):
    ex = random_examples(0, 4, eos)
    return {"padded": pad_batch(ex, eos, "train"), "packed": packed_batch(pack_rows(random_examples(1, 6, eos), 24), 24, eos)}


OBJECTIVES = {
    "sft": lambda m, b, g, mask: sft(m, b, g, mask_id=mask),
    "gift": lambda m, b, g, mask: gift(m, b, g, mask_id=mask),
    "blockwise": lambda m, b, g, mask: blockwise(m, b, g, mask_id=mask, block_size=4),
    "lift": lambda m, b, g, mask: lift(m, b, g, mask_id=mask),
    # the block-diffusion objective (BD3-LM's two-copy layout; LLaDA2 is trained block by block)
    "all_blocks": lambda m, b, g, mask: all_blocks(m, b, g, mask_id=mask, block_size=4),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_gradients_reach_router_and_experts(family, objective):
    model, mask, eos = load(family)
    for layout, batch in batches(eos).items():
        model.zero_grad()
        out = OBJECTIVES[objective](model, batch, torch.Generator().manual_seed(3), mask)
        assert torch.isfinite(out.loss_sum) and out.denom > 0, (layout, out)
        out.loss_sum.backward()
        moe = model.moe_layers()[-1]
        assert moe.router.weight.grad.abs().sum() > 0, layout
        assert sum(e.ff_out.weight.grad.abs().sum() for e in moe.experts if e.ff_out.weight.grad is not None) > 0
        attn = model.blocks[0].q_proj if hasattr(model.blocks[0], "q_proj") else model.blocks[0].qkv_proj
        assert attn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_one_sft_step_lowers_the_loss(family):
    model, mask, eos = load(family)
    batch = batches(eos)["padded"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        out = sft(model, batch, torch.Generator().manual_seed(0), mask_id=mask)
        return out.loss_sum / out.denom

    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        assert loss() < before.detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_attention_and_experts_exports_reference_names(family, tmp_path):
    from trainers.adapters import export_hf_adapter
    from trainers.lora import wrap_lora

    model, mask, eos = load(family)
    attn = ["q_proj", "v_proj"] if family == "lladamoe" else ["qkv_proj"]
    args = SimpleNamespace(lora_rank=2, lora_alpha=None, lora_dropout=0.0, lora_targets=attn + ["attn_out", "ff_proj",
                                                                                            "up_proj", "ff_out"],
                           model=str(FIXTURES / FAMILIES[family][0]))
    peft_model = wrap_lora(model, args)
    names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert any(".moe.experts.3.ff_out." in n for n in names) and any(attn[0] in n for n in names)
    batch = batches(eos)["padded"]
    out = sft(peft_model, batch, torch.Generator().manual_seed(0), mask_id=mask)
    out.loss_sum.backward()  # through the LoRA-wrapped experts (the per-expert segment path)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters()
               if "experts" in n and "lora_B" in n)
    peft_model.save_pretrained(tmp_path / "adapter")
    dst = export_hf_adapter(tmp_path / "adapter", tmp_path / "hf-adapter", family, "base")
    targets = json.loads((dst / "adapter_config.json").read_text())["target_modules"]
    last = model.config.num_layers - 1
    attn_hf = "self_attn.q_proj" if family == "lladamoe" else "attention.query_key_value"
    assert {f"model.layers.{last}.mlp.experts.3.down_proj", f"model.layers.0.{attn_hf}"} <= set(targets), targets
