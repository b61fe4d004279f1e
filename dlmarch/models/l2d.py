"""L2D (arXiv 2501.15781, SakanaAI/L2D): a frozen causal LM plus a diffusion path.

The main path is a Llama/Qwen2 `CausalLM`, every weight frozen and its activations unchanged. The
diffusion path has one `Block` per main layer, built with cross_attention=True: its queries attend
(causally) into that main layer's own post-RoPE keys and values, and its norms are the main
layer's frozen norms modulated adaLN-style by the time embedding:

    a   = RMSNorm(h_d) * (gamma_attn + w1) + s1 ;  h_d += g1 * o'(attn(rope_i(q'(a)), K_l, V_l))
    b   = RMSNorm(h_d) * (gamma_mlp + w2) + s2  ;  h_d += g2 * MLP'(b)

(w1, s1, g1, w2, s2, g2) = per-layer head(c_t), zero-initialised; q', o', MLP' are full copies of
the main weights or LoRA around them. The diffusion variable is a Gaussian flow in a small space:
e_y = normalize(Linear(embed[y])) * sqrt(F); x_t = (1 - t) x0 + t e_y with x0 ~ N(0, 64^2 I); the
path's input is MLP(x_t / std(t)); one t per token. Merge before the frozen final norm and head:
h = h_main + (head(c_t) - head(c_0)) * h_d, exactly the base model at t = 0 and when untrained. The
diffusion token at position i carries token i + 1 and uses RoPE position i.

Native parameter names: `main.*` (the frozen main path, not saved with the L2D weights),
`flow_embed`, `flow_in`, `time_embed`, `class_embed`, `blocks.N.{q_proj, attn_out, ff_proj,
up_proj, ff_out}` (`.weight` for full copies, `.A`/`.B` for LoRA), `block_mod.N`, `out_mod`.

This module is the model; beside it: its options (`l2d_config`, under the reference's names
`l2d_reference`), its sampler's solvers and x1 temperature (`l2d_schedule`), `lora`, and its checkpoints
(`l2d_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import compute_dtype, resolve_backend
from ..errors import ConfigError
from ..family import Family
from ..layers import Block, Modulation, rope_tables
from ..masks import AttentionMask, Tokens, pack_selected
from .base import ModelOutput, check_fits
from .causal import CausalLM
from .l2d_checkpoint import load_l2d, load_main, save_l2d
from .l2d_config import L2DConfig
from .lora import LoRALinear


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (indices 0, 2, 4, ... are the Linears, as the reference's)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.SiLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """cos/sin features of t in [0, 1] (as is, not scaled by 1000): (..., dim), fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[..., None].float() * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


LINEARS = ("q_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


class L2DModel(nn.Module):
    """Frozen `main` (CausalLM) + the diffusion path. See the module docstring."""

    def __init__(self, main: CausalLM, config: L2DConfig | None = None):
        super().__init__()
        config = config or L2DConfig()
        if main.config.family not in ("llama", "qwen2"):
            raise ConfigError(f"L2D wraps Llama or Qwen2 main paths, not {main.config.family}")
        self.config = config
        self.main = main
        main.requires_grad_(False)
        mc = main.config
        H, Fd = mc.hidden_size, config.flow_dim
        ht = config.time_hidden or H
        device = main.wte.weight.device
        check_fits(config.num_params(mc), f"the L2D diffusion path of flow_dim {Fd} on a hidden size of {H}", device)
        with torch.device(device):
            self.flow_embed = mlp([H] + [Fd] * config.flow_embed_layers)
            self.flow_in = mlp([Fd] + [config.flow_in_hidden or H] * (config.flow_in_layers - 1) + [H])
            self.time_embed = mlp([config.time_freq_size] + [ht] * config.time_layers)
            self.class_embed = nn.Embedding(config.num_classes + 1, ht) if config.num_classes else None
            n_mod = 6 if config.full_dit_modulation else 2
            self.blocks = nn.ModuleList(self._diffusion_block(b) for b in main.blocks)
            self.block_mod = nn.ModuleList(mlp([ht, ht, n_mod * H]) for _ in main.blocks)
            self.out_mod = mlp([ht, ht, H])
        self.to(dtype=main.dtype)
        self.reset_diffusion_parameters()

    def _diffusion_block(self, main_block: Block) -> Block:
        blk = Block(self.main.config, cross_attention=True)
        blk.attn_norm, blk.ff_norm = main_block.attn_norm, main_block.ff_norm  # gamma: the frozen main norms
        for name in LINEARS:
            src = getattr(main_block, name)
            if self.config.adapter == "lora":
                setattr(blk, name, LoRALinear(src, self.config.lora_rank, self.config.lora_alpha))
            else:
                with torch.no_grad():
                    getattr(blk, name).weight.copy_(src.weight)
                    if src.bias is not None:
                        getattr(blk, name).bias.copy_(src.bias)
        return blk

    # --- parameters -----------------------------------------------------------------------------------
    def reset_diffusion_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's initialisation: Xavier-uniform linears with zero biases, N(0, 0.02) on the
        time embedding's first and last layer, zero last layers of the modulation heads (the path
        starts as a no-op), LoRA A ~ N(0, 1/r) and B = 0."""

        def xavier(module):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight, generator=generator)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        with torch.no_grad():
            xavier(self.time_embed)
            self.time_embed[0].weight.normal_(0, 0.02, generator=generator)
            self.time_embed[-1].weight.normal_(0, 0.02, generator=generator)
            if self.class_embed is not None:
                self.class_embed.weight.normal_(0, 0.02, generator=generator)
            xavier(self.flow_embed)
            xavier(self.flow_in)
            for head in [*self.block_mod, self.out_mod]:
                xavier(head)
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
            for blk in self.blocks:
                for name in LINEARS:
                    lin = getattr(blk, name)
                    if isinstance(lin, LoRALinear):
                        lin.A.normal_(0, 1 / lin.A.shape[1], generator=generator)
                        lin.B.zero_()

    # --- the model protocol (as TransformerLM's; docs/architecture.md) ----------------------------------
    kind = "l2d"
    shifted_logits = True  # a diffusion query at position i samples token i + 1, after the main path's state
    sampler = "generate_l2d"
    likelihood = "causal"  # its main path's, exactly (the diffusion path at t = 0 leaves it unchanged)
    decoding = None
    families: tuple = ()  # set below

    @property
    def family(self):
        return self.families[0]

    @property
    def token_config(self):
        return self.main.config

    mask_token_id = None  # L2D samples in a continuous flow space: no mask token

    @property
    def stop_token_ids(self) -> list[int]:
        return self.main.stop_token_ids

    def trainable(self) -> nn.Module:
        """The whole model: its main path is frozen (requires_grad False) and stays out of the optimizer."""
        return self

    def main_parameter_ids(self) -> set[int]:
        return {id(p) for p in self.main.parameters()}

    def diffusion_state_dict(self) -> dict[str, Tensor]:
        """The parameters that are not the main path's (what an L2D checkpoint stores)."""
        main_ids = self.main_parameter_ids()
        out = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) not in main_ids and not name.startswith("main."):
                out[name] = p
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        self.main.eval()  # frozen: always in inference mode
        return self

    @property
    def device(self) -> torch.device:
        return self.main.device

    @property
    def dtype(self) -> torch.dtype:
        return self.main.dtype

    # --- pieces ---------------------------------------------------------------------------------------
    def flow_table(self, ids: Tensor | None = None) -> Tensor:
        """Normalised flow embedding e_y of tokens `ids` (any shape), or of the whole vocabulary
        (V, F) when ids is None."""
        emb = self.main.wte.weight if ids is None else self.main.wte(ids)
        f = self.flow_embed(emb)
        if self.config.flow_normalize:
            f = F.normalize(f, dim=-1) * self.config.flow_scale
        return f

    def training_times(self, shape, generator: torch.Generator | None = None, device=None) -> Tensor:
        """t of training, per token: U(0, 1) through the noise schedule, capped by min_training_noise."""
        t = torch.rand(shape, generator=generator, device=device or self.device)
        if self.config.noise_schedule == "cosmap":
            t = 1.0 - 1.0 / (torch.tan(torch.pi / 2 * t) + 1)
        return t * (1.0 - self.config.min_training_noise)

    def noisy_targets(self, targets: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t = (1 - t) x0 + t e_y for target tokens (any shape) and per-token t of the same shape."""
        e = self.flow_table(targets)
        x0 = torch.randn(e.shape, generator=generator, device=e.device, dtype=e.dtype) * self.config.noise_scale
        return ((1 - t[..., None]) * x0 + t[..., None] * e).to(self.dtype)

    def conditioning(self, t: Tensor, class_labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """c_t (and c_0 when the merge or the modulation is measured against t = 0), (..., h)."""
        te = self.time_embed
        dtype = te[0].weight.dtype

        def embed(times):
            c = te(timestep_embedding(times, self.config.time_freq_size).to(dtype)).to(self.dtype)
            if self.class_embed is not None:
                labels = class_labels if class_labels is not None else torch.full_like(times, self.config.num_classes, dtype=torch.long)
                c = c + self.class_embed(labels)
            return c

        c_t = embed(t)
        needs_c0 = self.config.preserve_behavior_at_flow_start or self.config.freeze_modulation_at_flow_start
        return c_t, (embed(torch.zeros_like(t)) if needs_c0 else None)

    def modulation(self, layer: int, c_t: Tensor, c_0: Tensor | None) -> Modulation:
        m = self.block_mod[layer](c_t)
        freeze = self.config.freeze_modulation_at_flow_start
        if freeze:
            m = m - self.block_mod[layer](c_0)
        parts = m.chunk(6 if self.config.full_dit_modulation else 2, dim=-1)
        if self.config.full_dit_modulation:
            w1, s1, g1, w2, s2, g2 = parts
            if freeze:  # the gates start from 1 when measured against t = 0
                g1, g2 = 1 + g1, 1 + g2
            return Modulation(w1, s1, g1, w2, s2, g2)
        w1, w2 = parts
        return Modulation(w1, None, 1, w2, None, 1)

    def flow_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The path's input MLP(x_t / std(t)) (the division in fp32 when configured)."""
        cfg = self.config
        if cfg.flow_in_time_rescaling > 0:
            dtype = x_t.dtype
            x = x_t.float() if cfg.flow_in_fp32 else x_t
            tt = t[..., None]  # std in t's own dtype (float64 inside the sampler's ODE), as the reference
            std = torch.sqrt((1 - tt) ** 2 * cfg.noise_scale**2 + tt**2 * cfg.target_variance)
            x_t = (x / std.to(x.dtype) * cfg.flow_in_time_rescaling).to(dtype if cfg.flow_in_fp32 else x.dtype)
        return self.flow_in(x_t.to(self.dtype))

    def condition(self, t: Tensor, class_labels: Tensor | None = None) -> tuple[list[Modulation], Tensor]:
        """Everything that depends on t (and the class) alone: each layer's modulation and the merge
        gate, for t (B, K). The sampler computes this once per ODE time, not once per evaluation."""
        if class_labels is not None and class_labels.shape != t.shape:
            class_labels = class_labels.view(-1, *([1] * (t.dim() - 1))).expand(t.shape)
        c_t, c_0 = self.conditioning(t, class_labels)
        mods = [self.modulation(i, c_t, c_0) for i in range(len(self.blocks))]
        gate = self.out_mod(c_t)
        if c_0 is not None:
            gate = gate - self.out_mod(c_0)
        return mods, gate

    def diffusion(self, h_main: Tensor, kv: list, q_pos: Tensor, mask: AttentionMask | None, x_t: Tensor, t: Tensor,
                  class_labels: Tensor | None = None, cond: tuple | None = None, rope=None) -> Tensor:
        """Logits of the diffusion path's queries.

        h_main (B, K, C): the main path's last hidden state (before the final norm) at the query
        positions; kv: per main layer (K_l, V_l) (B, Hkv, T, D); q_pos (B, K): query positions;
        x_t (B, K, F); t (B, K); cond: `condition(t, class_labels)` if already computed; rope: the
        query positions' tables if already computed. Returns logits (B, K, V) in fp32.
        """
        mods, gate = cond if cond is not None else self.condition(t, class_labels)
        h = self.flow_input(x_t, t)
        rope = rope if rope is not None else rope_tables(self.main.config, q_pos)
        backend = resolve_backend(self.main.config.attn_backend, mask, h.device, compute_dtype(h))
        for i, blk in enumerate(self.blocks):
            h, _ = blk(h, rope, mask, backend, kv=kv[i], mod=mods[i])
        merged = h_main + gate * h
        return self.main.head(self.main.ln_f(merged)).float()

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, x_t: Tensor, t: Tensor,
                class_labels: Tensor | None = None, queries: Tensor | None = None, doc_ids: Tensor | None = None,
                position_ids: Tensor | None = None) -> ModelOutput:
        """input_ids (B, L) -> logits.

        Without `queries`: a diffusion token at every position, x_t (B, L, F), t (B,) or (B, L);
        logits (B, L, V). With `queries` (B, L) bool: diffusion tokens only there, x_t (K, F) and t
        (K,) for the selected positions in row-major order; logits (K, V). The main path runs under
        torch.no_grad; nothing of it is trained.
        """
        with torch.no_grad():
            out = self.main(input_ids, attention_mask, doc_ids=doc_ids, position_ids=position_ids,
                            return_kv=True, output_hidden=True, compute_logits=False)
        # The main path's causal mask (built once, by the main path): its keys are the diffusion path's keys.
        h_main, kv, main_mask = out.hidden, out.kv, out.mask
        position_ids = main_mask.q.pos
        B, L = input_ids.shape
        if queries is None:
            t = t.expand(B, L) if t.dim() == 2 else t.view(B, 1).expand(B, L)
            return ModelOutput(self.diffusion(h_main, kv, position_ids, main_mask, x_t, t, class_labels))
        # Selected positions only: each row's queries packed to the left, (B, K).
        order, real = pack_selected(queries)
        K = order.shape[1]
        q_pos = position_ids.gather(1, order)
        q_tok = Tokens(pos=q_pos, doc=None if doc_ids is None else doc_ids.gather(1, order))
        mask = AttentionMask("causal", q_tok, main_mask.kv)
        xq = x_t.new_zeros(B, K, x_t.shape[-1])
        xq[real] = x_t
        tq = t.new_zeros(B, K)
        tq[real] = t
        hq = h_main.gather(1, order[..., None].expand(-1, -1, h_main.shape[-1]))
        if class_labels is not None:
            if class_labels.shape != t.shape:
                raise ValueError(f"with queries, class_labels must be per diffusion token like t {tuple(t.shape)}, "
                                 f"found {tuple(class_labels.shape)}")
            lq = torch.full((B, K), self.config.num_classes or 0, dtype=torch.long, device=t.device)
            lq[real] = class_labels
            class_labels = lq
        logits = self.diffusion(hq, kv, q_pos, mask, xq, tq, class_labels)
        return ModelOutput(logits[real])

    # --- checkpoints ----------------------------------------------------------------------------------
    @classmethod
    def from_main(cls, path_or_model, config: L2DConfig | None = None, dtype=None, device=None, seed: int | None = None,
                  **options) -> "L2DModel":
        """Wrap a Llama/Qwen2 checkpoint (HF or native directory, or a loaded CausalLM). `options`
        override fields of `config` (docs/l2d.md lists the defaults)."""
        main = load_main(path_or_model, dtype=dtype, device=device)
        config = dataclasses.replace(config or L2DConfig(), **options)
        model = cls(main, config)
        if seed is not None:  # a generator of its own: no global RNG side effect
            model.reset_diffusion_parameters(torch.Generator(device=model.device).manual_seed(seed))
        if isinstance(path_or_model, (str, Path)):
            model.main_source = str(path_or_model)
        return model

    def save_pretrained(self, path: str | Path, main_path: str | Path | None = None, decoding: dict | None = None) -> None:
        """The diffusion path's weights and options, plus a reference to the main path, which is not
        copied: its hub id when it came from the Hub (an id, or a snapshot in the hub cache), else its
        path relative to this directory, so that the two can move together (`main_reference`)."""
        save_l2d(self, path, main_path, decoding)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, device=None, main_path: str | Path | None = None, *,
                        config_json: dict | None = None, **main_overrides) -> "L2DModel":
        """An L2D directory written by `save_pretrained`; the main path is loaded from where it records
        (or `main_path`), with `main_overrides` (e.g. attn_backend) applied to its config.
        `config_json`: the directory's config.json when the caller has read it (it is not read again)."""
        return load_l2d(cls, path, dtype=dtype, device=device, main_path=main_path, config_json=config_json,
                        **main_overrides)


FAMILY = Family(name="l2d", model_class=L2DModel, config_class=L2DConfig)
L2DModel.families = (FAMILY,)
