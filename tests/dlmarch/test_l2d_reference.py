"""SakanaAI/L2D's option names read as ours (dlmarch/models/l2d_reference.py): its ode_kwargs, the
benchmark's ode_solver names, its temperature schedule names."""

import json

import pytest

from dlmarch import L2DConfig
from dlmarch.errors import ConfigError
from tests.helpers import FIXTURES

FLOW_KWARGS = json.loads((FIXTURES / "l2d-tiny-guided" / "l2d" / "flow_kwargs.json").read_text())


def test_reference_solver_names():
    base = dict(FLOW_KWARGS)
    for method, ours in (("heun", "heun2"), ("rk4", "rk4"), ("adaptive_heun", "adaptive_heun"), ("dopri5", "dopri5")):
        cfg = L2DConfig.from_reference({**base, "ode_kwargs": {"atol": 1e-4, "rtol": 1e-3, "method": method,
                                                               "options": {"first_step": 0.05}}}, 64)
        assert (cfg.solver, cfg.ode_atol, cfg.ode_rtol, cfg.ode_options) == (ours, 1e-4, 1e-3, {"first_step": 0.05})
    # The benchmark's own names (benchmark.py --ode_solver ...), as its build_ode_solver reads them.
    bench = {"ode_solver": "bosh3", "ode_solver_atol": 1e-3, "ode_solver_rtol": 1e-4}
    cfg = L2DConfig.from_reference({**base, **bench}, 64)
    assert (cfg.solver, cfg.ode_atol, cfg.ode_rtol, cfg.ode_options) == ("bosh3", 1e-3, 1e-4, {"first_step": 0.05})
    with pytest.raises(ConfigError, match="ode_solver='dopri5' is not supported"):
        L2DConfig.from_reference({**base, "ode_solver": "dopri5"}, 64)
    with pytest.raises(ConfigError, match="method='leapfrog' is not supported"):
        L2DConfig.from_reference({**base, "ode_kwargs": {"method": "leapfrog"}}, 64)
    with pytest.raises(ConfigError, match="'cosine_2' is not supported"):
        L2DConfig.from_reference({**base, "nstep_temperature_schedule": "cosine_2"}, 64)
    assert L2DConfig.from_reference({**base, "nstep_temperature_schedule": "Polynomial_1_1.0"}, 64).temperature == \
        "polynomial_1_1.0"
