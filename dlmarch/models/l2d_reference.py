"""SakanaAI/L2D's names in ours: its options (its .cfg / flow_kwargs.json, the benchmark's ode_solver)
as `L2DConfig` fields, and its checkpoint keys as our parameter names (conversions/l2d_reference.py
imports its checkpoints with them)."""

from __future__ import annotations

import re

from ..errors import ConfigError
from .l2d_schedule import SOLVERS


def reference_options(opts: dict, main_hidden: int) -> dict:
    """`L2DConfig`'s fields from options as SakanaAI/L2D names them; missing ones take that code's
    defaults. Settings we do not implement are refused by name."""

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
    method, atol, rtol, ode_options = _reference_solver(opts)
    trs = opts.get("flow_to_lm_timestep_rescaling")
    return dict(
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


def _reference_solver(opts: dict) -> tuple[str, float, float, dict | None]:
    """(solver, atol, rtol, options) from the reference's ode_kwargs, or the benchmark's ode_solver."""
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
    return method, atol, rtol, ode_options


def _reference_temperature(value) -> float | str:
    """nstep_temperature_schedule as the reference reads it: None -> 0.0, a number, or a schedule name."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        return value.lower()
    return float(value)


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
