"""L2D's sampler (card 7): per generated token, the main path once (with a KV cache), then an ODE
in the flow space with only the diffusion path evaluated.

For each new token: x starts at noise_scale * N(0, I); the velocity is v = (x1_hat - x) / (1 - t),
where x1_hat is the flow embedding of the token the path predicts at (x, t) (argmax, a sample at
the x1 temperature, or the probability-weighted average); the ODE is integrated from t = 0 to
`final_timestep` (Euler or midpoint on a uniform grid of `ode_steps` points, or an adaptive
Heun-Euler solver with error control, which spends evaluations where the prediction changes); a
final pass at t = final_timestep gives the logits of the token, chosen greedily or sampled.

Work done once, not per evaluation: the vocabulary's flow table (V x F), and for the fixed grids
every layer's t-dependent modulation (it depends on t and the class alone). Classifier-free
guidance on a class label: v = w v_cond + (1 - w) v_uncond, the unconditional branch using the null
class, both branches in one batched evaluation. The ODE state is float64, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import AttentionMask, Tokens
from ..layers import rope_tables


class _Path:
    """The diffusion path at the current position: everything but x and t is fixed."""

    def __init__(self, model, h_last: Tensor, kv: list, q_pos: Tensor, kv_valid: Tensor | None, class_labels: Tensor | None,
                 guidance: float | None, cond_cache: dict):
        self.model, self.guidance, self.cache = model, guidance, cond_cache
        if guidance is not None:  # [conditional; unconditional (null class)]
            null = torch.full_like(class_labels, model.config.num_classes)
            class_labels = torch.cat([class_labels, null])
            h_last = torch.cat([h_last, h_last])
            kv = [(torch.cat([k, k]), torch.cat([v, v])) for k, v in kv]
            q_pos = torch.cat([q_pos, q_pos])
            kv_valid = None if kv_valid is None else torch.cat([kv_valid, kv_valid])
        self.h, self.kv, self.q_pos, self.labels = h_last, kv, q_pos, class_labels
        n, T = q_pos.shape[0], kv[0][0].shape[2]
        kv_tok = Tokens(pos=torch.arange(T, device=q_pos.device).expand(n, T), valid=kv_valid)
        self.mask = AttentionMask("causal", Tokens(pos=q_pos), kv_tok)
        self.rope = rope_tables(model.main.config, q_pos)
        self.evaluations = 0

    def logits(self, x: Tensor, t: float) -> Tensor:
        """Logits (n, V) at flow state x (n, F) and time t."""
        tt = torch.full((self.q_pos.shape[0], 1), float(t), device=x.device)
        key = round(float(t), 12)
        if key not in self.cache:  # the modulations depend on t (and the class) only
            self.cache[key] = self.model.condition(tt, self.labels)
        self.evaluations += 1
        out = self.model.diffusion(self.h, self.kv, self.q_pos, self.mask, x[:, None].to(self.model.dtype), tt,
                                   cond=self.cache[key], rope=self.rope)
        return out[:, 0]


def estimate_x1(logits: Tensor, table: Tensor, how: str, temperature: float, generator) -> Tensor:
    """x1_hat (n, F) float64 from logits (n, V) and the flow table (V, F)."""
    if temperature <= 0:
        return table[logits.argmax(-1)]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if how == "sample":
        return table[torch.multinomial(probs, 1, generator=generator).squeeze(-1)]
    return probs.double() @ table


def integrate(velocity, x: Tensor, t_end: float, steps: int, solver: str, rtol: float = 1e-3, atol: float = 1e-2,
              max_evaluations: int = 64) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to t_end."""
    if solver in ("euler", "midpoint"):
        if steps < 2:
            raise ValueError(f"ode_steps must be at least 2 (grid points), found {steps}")
        grid = torch.linspace(0.0, t_end, steps).tolist()
        for t0, t1 in zip(grid[:-1], grid[1:]):
            dt = t1 - t0
            if solver == "euler":
                x = x + dt * velocity(x, t0)
            else:
                k1 = velocity(x, t0)
                x = x + dt * velocity(x + 0.5 * dt * k1, t0 + 0.5 * dt)
        return x
    if solver != "adaptive":
        raise ValueError(f"unknown solver {solver!r} (euler, midpoint, adaptive)")
    # With a fixed predicted token the flow is a straight line that Euler and Heun both follow
    # exactly, so steps grow while the prediction is stable; where it flips, the velocity jumps and
    # the step shrinks, down to a quarter of the uniform grid's step.
    h_min = t_end / (4 * max(steps - 1, 1))
    t, h, used = 0.0, t_end / max(steps - 1, 1), 0
    while t < t_end - 1e-12 and used < max_evaluations:
        h = min(h, t_end - t)
        k1 = velocity(x, t)
        x_euler = x + h * k1
        k2 = velocity(x_euler, t + h)
        used += 2
        x_heun = x + 0.5 * h * (k1 + k2)
        scale = atol + rtol * torch.maximum(x.abs(), x_heun.abs())
        err = float(((x_heun - x_euler) / scale).pow(2).mean().sqrt())
        if err <= 1.0 or h <= h_min * (1 + 1e-9):
            x, t = x_heun, t + h
        h = max(h_min, h * min(5.0, max(0.2, 0.9 * (err + 1e-12) ** -0.5)))
    return x


@torch.no_grad()
def generate_l2d(model, prompt: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 64, *,
                 ode_steps: int | None = None, solver: str | None = None, temperature: float = 0.0,
                 x1_temperature: float | None = None, x1_estimation: str | None = None, final_timestep: float | None = None,
                 class_label: int | Tensor | None = None, guidance: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, rtol: float = 1e-3, atol: float = 1e-2,
                 progress: bool = False, stats: dict | None = None) -> Tensor:
    """Prompt (B, P) [+ left-padding attention_mask] -> prompt + up to max_new_tokens tokens.

    ode_steps / solver / x1_* / final_timestep default to the model's L2DConfig. `temperature`
    samples the final token (0: greedy). `class_label` and `guidance` (w) select classifier-free
    guidance on a task class. Rows that emit `eos_token_id` are padded with it afterwards; decoding
    stops when every row has. `stats` receives 'main_calls' and 'diffusion_evaluations'.
    """
    cfg = model.config
    ode_steps = ode_steps or cfg.ode_steps
    solver = solver or cfg.solver
    x1_temperature = cfg.temperature if x1_temperature is None else x1_temperature
    x1_estimation = x1_estimation or cfg.x1_estimation
    final_timestep = cfg.final_timestep if final_timestep is None else final_timestep
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (batch, length) with at least one token, found {tuple(prompt.shape)}")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, found {max_new_tokens}")
    device = model.device
    prompt = prompt.to(device)
    B = prompt.shape[0]
    labels = None
    if class_label is not None or guidance is not None:
        if not cfg.num_classes:
            raise ValueError("class_label / guidance need a model trained with num_classes")
        if class_label is None:
            raise ValueError("guidance needs a class_label")
        labels = torch.as_tensor(class_label, device=device).long().expand(B).clone()
        if guidance is None:
            guidance = cfg.guidance if cfg.guidance is not None else 1.0
    table = model.flow_table().double()
    main = model.main
    calls = evaluations = 0
    am = None if attention_mask is None else attention_mask.to(device).long()
    out = main(prompt, am, return_kv=True, output_hidden=True, compute_logits=False)
    calls += 1
    kv, h_last = out.kv, out.hidden[:, -1:]
    tokens = [prompt]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cond_cache: dict = {}
    steps = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="tokens", leave=False)
    for i in steps:
        cur = kv[0][0].shape[2]
        q_pos = torch.full((B, 1), cur - 1, device=device)
        path = _Path(model, h_last, kv, q_pos, None if am is None else am.bool(), labels, guidance, cond_cache)

        def velocity(x, t):
            xs = torch.cat([x, x]) if guidance is not None else x
            x1 = estimate_x1(path.logits(xs, t), table, x1_estimation, x1_temperature, generator)
            v = (x1 - xs) / (1.0 - t) if t < 1.0 else torch.zeros_like(xs)
            if guidance is not None:
                vc, vu = v.chunk(2)
                v = guidance * vc + (1 - guidance) * vu
            return v

        x = torch.randn(B, cfg.flow_dim, dtype=torch.float64, device=device, generator=generator) * cfg.noise_scale
        x = integrate(velocity, x, final_timestep, ode_steps, solver, rtol, atol)
        final = path.logits(torch.cat([x, x]) if guidance is not None else x, final_timestep)
        if guidance is not None:  # the final logits: guided the same way
            fc, fu = final.chunk(2)
            final = guidance * fc + (1 - guidance) * fu
        evaluations += path.evaluations
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(final / temperature, -1), 1, generator=generator).squeeze(-1)
        else:
            nxt = final.argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done = done | (nxt == eos_token_id)
        tokens.append(nxt[:, None])
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        if am is not None:
            am = torch.cat([am, torch.ones(B, 1, dtype=am.dtype, device=device)], 1)
        out = main(nxt[:, None], am, past_kv=kv, return_kv=True, output_hidden=True, compute_logits=False)
        calls += 1
        kv, h_last = out.kv, out.hidden
    if stats is not None:
        stats.update(main_calls=calls, diffusion_evaluations=evaluations, tokens=len(tokens) - 1)
    return torch.cat(tokens, 1)
