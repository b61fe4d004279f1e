"""L2D's sampler settings that its options name (SakanaAI/L2D `nstep_inference`): the ODE solvers,
and the x1 temperature as a function of the flow time t (`nstep_temperature_schedule`). The config
checks its options against them; the sampler (dlmarch/sampling/l2d.py) runs them."""

from __future__ import annotations

import torch

from ..errors import ConfigError

# euler and midpoint are built in (the same arithmetic as torchdiffeq's); the others are torchdiffeq's
# own (the optional extra `l2d`), under its names, as the reference passes them to odeint.
BUILTIN_SOLVERS = ("euler", "midpoint")
SOLVERS = BUILTIN_SOLVERS + ("heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams",
                             "adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8")


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
