"""The experiments' figures from results.json, one per experiment, written atomically beside report.md."""

from __future__ import annotations

from pathlib import Path

from dlmarch.atomic import atomic_file

from .l2d import ODE_EVALS


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    plt = pyplot()
    fig.tight_layout()
    with atomic_file(path, "wb") as f:  # a reader (or a resumed command) never sees half a PNG
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def methods_plot(out: Path, r: dict) -> None:
    curves = r["curves"]
    fig, axes = pyplot().subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (task, methods) in zip(axes[0], curves.items()):
        for i, (m, c) in enumerate(methods.items()):
            ax.plot(c["budgets"], [100 * x for x in c["mean"]], marker="o", color=f"C{i}", label=m)
            ax.fill_between(c["budgets"], [100 * lo for lo, _ in c["ci95"]], [100 * hi for _, hi in c["ci95"]],
                            color=f"C{i}", alpha=0.15)
        if task in r.get("base", {}):
            ax.axhline(100 * r["base"][task], color="k", ls="--", label="pretrained base")
        ax.set_title(f"{task}: mean and 95% t-interval over seeds")
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    save(fig, out / "methods.png")


def block_plot(out: Path, r: dict) -> None:
    b = r["block_size"]
    rows = [*b["accuracy"], *([b["sft"]] if "sft" in b else [])]
    labels = [f"blockwise {t}" for t in b["train"]] + (["sft"] if "sft" in b else [])
    fig, ax = pyplot().subplots(figsize=(5.5, 4))
    im = ax.imshow([[100 * x for x in row] for row in rows], cmap="viridis")
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            ax.text(j, i, f"{100 * x:.1f}", ha="center", va="center", color="w")
    ax.set_xticks(range(len(b["decode"])), b["decode"])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("decoding block length")
    ax.set_ylabel("trained with")
    fig.colorbar(im, label="cell accuracy (%), mean over seeds")
    save(fig, out / "block_size.png")


def gap_plot(out: Path, r: dict) -> None:
    g = r["gap"]
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(12, 4))
    a1.plot(g["budgets"], [100 * x for x in g["causal"]], marker="o", label="causal (greedy)")
    a1.plot(g["budgets"], [100 * x for x in g["mdm"]], marker="o", label="masked diffusion (d1 protocol)")
    a1.set_xlabel("training steps from scratch")
    a1.set_ylabel("cell accuracy (%)")
    a1.set_ylim(0, 100)
    a1.legend()
    names = list(g["mdm_decoding"])
    a2.barh(range(len(names)), [100 * g["mdm_decoding"][n] for n in names])
    a2.set_yticks(range(len(names)), names, fontsize=8)
    a2.axvline(100 * g["causal"][-1], color="k", ls="--", label="causal")
    a2.set_xlabel(f"cell accuracy (%) at {g['budgets'][-1]} steps")
    a2.legend()
    save(fig, out / "gap.png")


def l2d_plot(out: Path, r: dict) -> None:
    l2d = r["l2d_steps"]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for s in ODE_EVALS:
        ns = sorted(l2d[s], key=int)
        ax.plot([int(n) for n in ns], [100 * l2d[s][n] for n in ns], marker="o", label=f"L2D, {s}")
    ax.axhline(100 * l2d["main_only"], color="k", ls="--", label="main model alone")
    ax.axhline(100 * l2d["ar_finetune"], color="gray", ls=":", label="AR fine-tune (equal budget)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ODE evaluations per token")
    ax.set_ylabel("cell accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    save(fig, out / "l2d_steps.png")


def rl_plot(out: Path, r: dict) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for i, (start, x) in enumerate(r["rl"]["starts"].items()):
        for j, curve in enumerate(x["reward"]):
            ax.plot(range(1, len(curve) + 1), curve, color=f"C{i}", alpha=0.25, lw=0.8)
        n = min(len(c) for c in x["reward"])
        mean = [sum(c[k] for c in x["reward"]) / len(x["reward"]) for k in range(n)]
        ax.plot(range(1, n + 1), mean, color=f"C{i}", lw=2, label=f"{start} cold start (mean of seeds)")
    ax.set_xlabel("diffu-GRPO step")
    ax.set_ylabel("mean reward of the step's rollouts")
    ax.legend()
    save(fig, out / "rl.png")


def cost_plot(out: Path, r: dict) -> None:
    names = list(r["cost"])
    fig, ax = pyplot().subplots(figsize=(7, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["cost"][m] for m in names], 0.4, label="per training step")
    ax.bar([x + 0.2 for x in xs], [r.get("cost_per_item", {}).get(m, 0.0) for m in names], 0.4, label="per evaluated item")
    ax.set_xticks(list(xs), names)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("ratio to SFT")
    ax.legend()
    save(fig, out / "cost.png")


PLOTS = {"curves": methods_plot, "block_size": block_plot, "gap": gap_plot, "l2d_steps": l2d_plot, "rl": rl_plot,
         "cost": cost_plot}


def plots(out: Path, r: dict) -> None:
    for key, plot in PLOTS.items():
        if key in r:
            plot(out, r)
