"""L2D's options (arXiv 2501.15781, SakanaAI/L2D): the diffusion path's shape, its training noise and
its sampler's defaults, checked when built; `from_reference` reads them under the reference's names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import _positive_int, strict_dataclass
from ..errors import ConfigError
from .l2d_reference import reference_options
from .l2d_schedule import SOLVERS, x1_temperature_schedule


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
        code's defaults. Settings we do not implement are refused by name (`reference_options`)."""
        return cls(**reference_options(opts, main_hidden))
