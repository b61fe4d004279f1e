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
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import NATIVE_FORMAT, WeightFiles, copy_weights, is_weight_file, native_header, write_weights
from ..outputs import atomic_update, write_json
from ..config import _positive_int, read_json, strict_dataclass
from ..errors import ConfigError
from ..family import Family, config_from_dict, read_native_config
from ..hub import is_hub_id, local_model_dir, snapshot_repo_id
from ..layers import Block, Modulation, rope_tables
from ..attention import compute_dtype, resolve_backend
from ..masks import AttentionMask, Tokens, pack_selected
from .base import ModelOutput, check_fits
from .causal import CausalLM


@dataclass
class L2DConfig:
    """L2D options, with the defaults of the paper's Llama/Qwen2 runs (docs/l2d.md). `from_reference` reads SakanaAI/L2D's option names."""

    flow_dim: int = 256  # flow_representation_dim
    flow_embed_layers: int = 1  # flow_representation_num_layers
    flow_normalize: bool = True  # flow_representation_normalize
    flow_rescaling: str = "mult"  # flow_representation_rescaling: mult (x sqrt F), div, none
    noise_scale: float = 64.0  # noise_rescaling
    flow_in_layers: int = 2  # flow_to_lm_translation_depth
    flow_in_hidden: int | None = 256  # flow_to_lm_hidden_size (None: the main hidden size)
    flow_in_time_rescaling: float = 1.0  # flow_to_lm_timestep_rescaling (0: no division by std(t))
    flow_in_fp32: bool = True  # flow_to_lm_rescale_in_float32
    time_freq_size: int = 256  # timestep_modulation_freq_embedding_size
    time_hidden: int | None = 256  # timestep_modulation_hidden_size (None: the main hidden size)
    time_layers: int = 2  # timestep_modulation_num_layers
    full_dit_modulation: bool = True  # 6 adaLN terms per layer (else 2: the norm scales only)
    freeze_modulation_at_flow_start: bool = False
    preserve_behavior_at_flow_start: bool = True
    adapter: str = "lora"  # "lora" (separate_flow_params_with_lora) or "full" (copies of the main weights)
    lora_rank: int = 32
    lora_alpha: float = 32.0
    num_classes: int | None = None  # guidance_modulation_num_classes (null class = num_classes)
    class_dropout: float = 0.2  # guidance_modulation_training_dropout
    noise_schedule: str = "identity"  # identity | cosmap (training t)
    min_training_noise: float = 0.0
    # Sampling defaults (the reference keeps them on the model too: ode_kwargs, nstep_*).
    ode_steps: int = 8  # grid points (midpoint: 2 evaluations per interval)
    solver: str = "midpoint"  # ode_kwargs["method"]: euler, midpoint built in; the others through torchdiffeq
    ode_atol: float = 1e-5  # ode_kwargs["atol"] (adaptive solvers)
    ode_rtol: float = 1e-5  # ode_kwargs["rtol"]
    ode_options: dict | None = None  # ode_kwargs["options"], e.g. {"first_step": 0.05}
    final_timestep: float = 1.0
    x1_estimation: str = "sample"  # sample: table row of the argmax/sampled token; average: expectation
    temperature: float | str = 0.0  # nstep_temperature_schedule: x1 temperature, or "polynomial_<p>_<end>"
    normalize_x1: bool = False  # nstep_normalize_x1_predictions (temperature > 0, not with clamp_x1)
    clamp_x1: bool = False  # nstep_clamp_predictions ("average": the table row nearest the expectation)
    guidance: float | None = None  # nstep_guidance_parameter (w); None: 1.0 when classes exist

    def __post_init__(self):
        # Sizes first: a string or an absurd count would otherwise reach a Linear's allocation.
        for name in ("flow_dim", "flow_embed_layers", "flow_in_layers", "time_freq_size", "time_layers", "lora_rank",
                     "ode_steps"):
            _positive_int(getattr(self, name), f"L2D {name}")
        for name in ("flow_in_hidden", "time_hidden", "num_classes"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), f"L2D {name}")
        if self.adapter not in ("lora", "full"):
            raise ConfigError(f"L2D adapter must be 'lora' or 'full', found {self.adapter!r}")
        if self.flow_rescaling not in ("mult", "div", "none"):
            raise ConfigError(f"L2D flow_rescaling must be mult, div or none, found {self.flow_rescaling!r}")
        if self.noise_schedule not in ("identity", "cosmap"):
            raise ConfigError(f"L2D noise_schedule must be identity or cosmap, found {self.noise_schedule!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"L2D solver must be one of {SOLVERS}, found {self.solver!r}")
        if self.x1_estimation not in ("sample", "average"):
            raise ConfigError(f"L2D x1_estimation must be sample or average, found {self.x1_estimation!r}")
        x1_temperature_schedule(self.temperature)  # refuses an unknown schedule by name
        if self.freeze_modulation_at_flow_start and not self.preserve_behavior_at_flow_start:
            raise ConfigError("freeze_modulation_at_flow_start needs preserve_behavior_at_flow_start")

    def num_params(self, main) -> int:
        """Parameters of the diffusion path on a main path of config `main` (its blocks are built at
        the main's shape, then LoRA-wrapped or kept): for the memory check before building it."""
        H, Fd, ht = main.hidden_size, self.flow_dim, self.time_hidden or main.hidden_size
        fh = self.flow_in_hidden or H

        def mlp_params(sizes):
            return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

        n = mlp_params([H] + [Fd] * self.flow_embed_layers) + mlp_params([Fd] + [fh] * (self.flow_in_layers - 1) + [H])
        n += mlp_params([self.time_freq_size] + [ht] * self.time_layers) + mlp_params([ht, ht, H])
        n += ((self.num_classes or 0) + 1) * ht
        per_layer = mlp_params([ht, ht, 6 * H]) + main.num_params(include_embedding=False) // main.num_layers
        return n + main.num_layers * per_layer

    @property
    def flow_scale(self) -> float:
        """Norm of a target embedding e_y (normalize * this)."""
        return {"mult": math.sqrt(self.flow_dim), "div": 1 / math.sqrt(self.flow_dim), "none": 1.0}[self.flow_rescaling]

    @property
    def target_variance(self) -> float:
        """The variance per dimension the flow-to-LM rescaling assumes for x_1."""
        return {"mult": 1.0, "div": 1 / self.flow_dim**2, "none": 1 / self.flow_dim}[self.flow_rescaling]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "L2DConfig":
        return strict_dataclass(cls, d, "L2D option(s)")

    @classmethod
    def from_reference(cls, opts: dict, main_hidden: int) -> "L2DConfig":
        """Options as SakanaAI/L2D names them (its .cfg / flow_kwargs.json); missing ones take that
        code's defaults. Settings we do not implement are refused by name."""

        def need(name, allowed, default):
            value = opts.get(name, default)
            if value not in allowed:
                raise ConfigError(f"L2D option {name}={value!r} is not supported (supported: {allowed})")
            return value

        need("base_params_to_freeze", ("all",), "none")
        need("flow_representation_space", ("mapping",), "mapping")
        need("modulate_hidden_states", (False,), False)
        need("separate_flow_params", (True,), False)
        need("self_attention_on_flow_sequence", (False,), False)
        need("velocity_schedule", ("constant",), "constant")
        need("minimum_training_noise_units", ("time",), "time")
        layers = opts.get("flow_representation_num_layers")
        if not layers:
            raise ConfigError("L2D option flow_representation_num_layers is required for the 'mapping' space")
        rescaling = opts.get("flow_representation_rescaling") or "none"
        lora_rank = int(opts.get("flow_lora_rank", 8))
        alpha = opts.get("flow_lora_alpha")
        alpha = 2.0 * lora_rank if alpha in (None, -1) else float(alpha)
        ode = dict(opts.get("ode_kwargs") or {"atol": 1e-5, "rtol": 1e-5, "method": "midpoint"})
        if "ode_solver" in opts:  # the benchmark's names, turned into ode_kwargs as its build_ode_solver does
            solver = opts["ode_solver"]
            fixed = ("euler", "midpoint", "heun", "heun2", "heun3", "rk4")
            adaptive = ("adaptive_heun", "fehlberg2", "bosh3")
            if solver not in fixed + adaptive:
                raise ConfigError(f"L2D option ode_solver={solver!r} is not supported (supported: {fixed + adaptive})")
            ode = {"atol": opts.get("ode_solver_atol", 1e-5), "rtol": opts.get("ode_solver_rtol", 1e-5),
                   "method": solver}
            if solver in adaptive:
                ode["options"] = {"first_step": 0.05}
        method = ode.pop("method", None)
        if method is None:  # the reference indexes ode_kwargs["method"] unconditionally
            raise ConfigError("L2D option ode_kwargs has no 'method'")
        method = "heun2" if method == "heun" else method  # as the reference's nstep_inference renames it
        if method not in SOLVERS:
            raise ConfigError(f"L2D option ode_kwargs method={method!r} is not supported (supported: {SOLVERS})")
        atol, rtol, ode_options = ode.pop("atol", 1e-5), ode.pop("rtol", 1e-5), ode.pop("options", None)
        if ode:
            raise ConfigError(f"L2D option ode_kwargs: {sorted(ode)} not supported (method, atol, rtol, options)")
        trs = opts.get("flow_to_lm_timestep_rescaling")
        return cls(
            flow_dim=int(opts.get("flow_representation_dim") or main_hidden),
            flow_embed_layers=int(layers),
            flow_normalize=bool(opts.get("flow_representation_normalize", True)),
            flow_rescaling=rescaling,
            noise_scale=float(opts.get("noise_rescaling", 1.0)),
            flow_in_layers=int(opts.get("flow_to_lm_translation_depth", 2)),
            flow_in_hidden=opts.get("flow_to_lm_hidden_size"),
            flow_in_time_rescaling=float(trs) if trs and trs > 0 else 0.0,
            flow_in_fp32=bool(opts.get("flow_to_lm_rescale_in_float32", False)),
            time_freq_size=int(opts.get("timestep_modulation_freq_embedding_size", 256)),
            time_hidden=opts.get("timestep_modulation_hidden_size"),
            time_layers=int(opts.get("timestep_modulation_num_layers", 2)),
            full_dit_modulation=bool(opts.get("full_dit_modulation", False)),
            freeze_modulation_at_flow_start=bool(opts.get("freeze_modulation_at_flow_start", False)),
            preserve_behavior_at_flow_start=bool(opts.get("preserve_behavior_at_flow_start", True)),
            adapter="lora" if opts.get("separate_flow_params_with_lora", False) else "full",
            lora_rank=lora_rank,
            lora_alpha=alpha,
            num_classes=opts.get("guidance_modulation_num_classes") or None,
            class_dropout=float(opts.get("guidance_modulation_training_dropout", 0.2)),
            noise_schedule=need("noise_schedule", ("identity", "cosmap"), "identity"),
            min_training_noise=float(opts.get("minimum_training_noise") or 0.0),
            solver=method,
            ode_atol=float(atol),
            ode_rtol=float(rtol),
            ode_options=ode_options,
            final_timestep=float(opts.get("nstep_final_timestep", 1.0)),
            x1_estimation=str(opts.get("nstep_x1_estimation", "average")).lower(),
            temperature=_reference_temperature(opts.get("nstep_temperature_schedule")),
            normalize_x1=bool(opts.get("nstep_normalize_x1_predictions", False)),
            clamp_x1=bool(opts.get("nstep_clamp_predictions", False)),
            guidance=opts.get("nstep_guidance_parameter"),
        )


# euler and midpoint are built in (the same arithmetic as torchdiffeq's); the others are torchdiffeq's
# own (the optional extra `l2d`), under its names, as the reference passes them to odeint.
BUILTIN_SOLVERS = ("euler", "midpoint")
SOLVERS = BUILTIN_SOLVERS + ("heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams",
                             "adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8")


def _reference_temperature(value) -> float | str:
    """nstep_temperature_schedule as the reference reads it: None -> 0.0, a number, or a schedule name."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        return value.lower()
    return float(value)


def x1_temperature_schedule(spec: float | str):
    """The x1 temperature as a function of the (float64 tensor) time t, as SakanaAI/L2D's
    get_nstep_temperature: a constant, or "polynomial_<p>_<end>": (1 - t / end)^p, 0 from t = end on
    (flow_llms/utils.polynomial_temperature; the paper's code tasks use polynomial_1_1.0)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
        return lambda t: value
    if isinstance(spec, str) and spec.startswith("polynomial"):
        parts = spec.split("_")
        try:
            _, p, end = parts
            p, end = float(p), float(end)
        except ValueError:
            raise ConfigError(f"L2D x1 temperature schedule {spec!r}: expected polynomial_<p>_<end>") from None

        def polynomial(t):
            x = 1 - (1 / end) * t
            return torch.where(t >= end, torch.zeros_like(t), torch.pow(x, p))

        return polynomial
    raise ConfigError(f"L2D x1 temperature (nstep_temperature_schedule) {spec!r} is not supported: "
                      "a number or polynomial_<p>_<end>")


def main_fingerprint(main: nn.Module) -> str:
    """sha256 over the main path's parameter names, shapes and values rounded to bfloat16: the
    diffusion path is trained against these weights, so a checkpoint records it and loading checks
    it. Rounding to bfloat16 makes it the same whether the main path was loaded in fp32 or bf16."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(main.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)};".encode())
            if t.is_floating_point():
                t = t.to(torch.bfloat16)
            h.update(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


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


class LoRALinear(nn.Module):
    """base(x) + (x @ A @ B) * alpha / rank around a frozen Linear. A is (in, r), B is (r, out), the
    reference's layout, so its checkpoints load as they are."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = float(alpha) / rank
        self.A = nn.Parameter(torch.randn(base.in_features, rank, device=base.weight.device) / rank)
        self.B = nn.Parameter(torch.zeros(rank, base.out_features, device=base.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.A @ self.B) * self.scale


LINEARS = ("q_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


_LINEAR = {"self_attn.flow_q_proj": "q_proj", "self_attn.flow_o_proj": "attn_out", "mlp.flow_gate_proj": "ff_proj",
           "mlp.flow_up_proj": "up_proj", "mlp.flow_down_proj": "ff_out"}


def reference_name(name: str) -> tuple[str, str | None]:
    """A reference key -> ("flow", native name), ("base", reference base name) or ("wrapped", the
    main weight a LoRA wrapper repeats). Unknown names -> ("unknown", None)."""
    if name.startswith("model."):
        rest = name[len("model."):]
        m = re.match(r"layers\.(\d+)\.(self_attn\.flow_[qo]_proj|mlp\.flow_(?:gate|up|down)_proj)\.(.+)$", rest)
        if m:
            layer, module, leaf = m.groups()
            ours = f"blocks.{layer}.{_LINEAR[module]}"
            if leaf in ("A", "B"):
                return "flow", f"{ours}.{leaf}"
            if leaf.startswith("wrapped_layer."):
                base_module = module.replace("flow_", "")
                return "wrapped", f"model.layers.{layer}.{base_module}.{leaf[len('wrapped_layer.'):]}"
            return "flow", f"{ours}.{leaf}"
        m = re.match(r"layers\.(\d+)\.modulation_head\.mlp\.(\d+)\.(weight|bias)$", rest)
        if m:
            return "flow", f"block_mod.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        for ref, ours in (("modulation_head.mlp.", "out_mod."), ("timestep_embedder.mlp.", "time_embed."),
                          ("flow_token_embedder.embedder.layers_module.", "flow_embed."),
                          ("flow_to_lm_encoder.embedder.layers_module.", "flow_in."),
                          ("flow_to_lm_encoder.layers_module.", "flow_in."),
                          ("data_label_embedder.", "class_embed.")):
            if rest.startswith(ref):
                return "flow", ours + rest[len(ref):]
    return "base", name


def load_main(path_or_model, dtype=None, device=None, **config_overrides) -> CausalLM:
    """L2D's main path: a loaded CausalLM, or a Llama/Qwen2 checkpoint directory (HF or native)."""
    if isinstance(path_or_model, nn.Module):
        main = path_or_model
    else:
        path = local_model_dir(path_or_model, "L2D main path")
        raw = read_json(path / "config.json")
        if raw.get("format") == NATIVE_FORMAT:
            found = raw["config"].get("family") if isinstance(raw.get("config"), dict) else raw.get("model")
        else:
            found = raw.get("model_type")
        if found not in {f.name for f in CausalLM.families} | {f.hf_model_type for f in CausalLM.families}:
            raise ConfigError(f"{path}: L2D's main path is Llama or Qwen2, not {found}")
        main = CausalLM.from_pretrained(path, dtype=dtype, device=device, **config_overrides)
    if not isinstance(main, CausalLM):
        raise ConfigError(f"L2D wraps a Llama or Qwen2 model, not a {type(main).__name__}")
    return main


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
        main_path = main_path or getattr(self, "main_source", None)
        if main_path is None:
            raise ValueError("save_pretrained needs main_path: where the main path's checkpoint lives")
        path = Path(path)
        state = [(k, v.detach()) for k, v in self.diffusion_state_dict().items()]
        with atomic_update(path, stale=is_weight_file) as tmp:
            write_weights(tmp, state, 5 * 2**30, metadata={"format": "pt"})
            write_json(tmp / "config.json", native_header(type(self).__name__, main=main_reference(main_path, path),
                                                                    main_config=self.main.config.to_dict(),
                                                                    main_fingerprint=main_fingerprint(self.main),
                                                                    l2d=self.config.to_dict(),
                                                                    **({"decoding": decoding} if decoding else {})))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, device=None, main_path: str | Path | None = None,
                        **main_overrides) -> "L2DModel":
        """An L2D directory written by `save_pretrained`; the main path is loaded from where it records
        (or `main_path`), with `main_overrides` (e.g. attn_backend) applied to its config."""
        path = Path(path)
        raw = read_native_config(path)
        if raw.get("model") != "L2DModel":
            raise ConfigError(f"{path}: not an L2D checkpoint")
        if main_path is not None:
            main_dir = main_path
        elif is_hub_id(raw["main"]) and not (path / raw["main"]).exists():
            main_dir = raw["main"]
        else:  # recorded relative to this directory (older checkpoints: as given, relative to where they ran)
            main_dir = Path(raw["main"])
            if not main_dir.is_absolute() and (path / main_dir).exists():
                main_dir = path / main_dir
        main = load_main(main_dir, dtype=dtype, device=device, **main_overrides)
        want = config_from_dict(raw["main_config"], CausalLM.families)
        if want.replace(attn_backend=main.config.attn_backend) != main.config:
            raise ConfigError(f"{path}: its main path config differs from the one at {main_dir}")
        recorded = raw.get("main_fingerprint")  # absent in checkpoints written before it was recorded
        if recorded is not None and recorded != main_fingerprint(main):
            raise ConfigError(f"{path}: the main path at {main_dir} has other weights than the one this L2D checkpoint "
                              f"was trained on (fingerprint {main_fingerprint(main)[:12]}, expected {recorded[:12]})")
        model = cls(main, L2DConfig.from_dict(raw["l2d"]))
        copy_weights(model.diffusion_state_dict(), WeightFiles(path), f"{path} (L2D)")
        model.main_source = str(main_dir)
        model.decoding = raw.get("decoding") if isinstance(raw.get("decoding"), dict) else None
        return model


def main_reference(main_path: str | Path, checkpoint: str | Path) -> str:
    """How an L2D checkpoint at `checkpoint` names its main path: a hub id as is (or the id of a hub-cache
    snapshot), a local directory relative to the checkpoint (absolute only across filesystem roots)."""
    text = str(main_path)
    if is_hub_id(text):
        return text
    main = Path(main_path).resolve()
    repo_id = snapshot_repo_id(main)
    if repo_id is not None:
        return repo_id
    try:
        return os.path.relpath(main, Path(checkpoint).resolve())
    except ValueError:  # another drive (Windows)
        return str(main)


FAMILY = Family(name="l2d", model_class=L2DModel, config_class=L2DConfig)
L2DModel.families = (FAMILY,)
