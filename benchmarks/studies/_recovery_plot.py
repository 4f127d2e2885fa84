"""The recovery study's figure: per dataset x model, test accuracy and worst per-class sensitivity drop vs
measured ORT speedup (the Pareto view of equal measured latency), and test accuracy vs MACs.

Rows: (1) test accuracy vs measured speedup, every criterion and recovery state, with the Pareto front of
the headline recipe's cells circled (no other cell of that state is at least as fast and as accurate);
(2) worst per-class test sensitivity drop (dense − pruned, points) vs measured speedup, with its paired
95 % interval, headline recipe only; (3) test accuracy vs MACs reduction.
"""

from __future__ import annotations

from pathlib import Path

from ._recovery_latency import pareto_front
from ._recovery_report import GATE_SENS, STATES


def _curves(ax, rows: list[dict], crits: list[str], colors: dict, xkey: str) -> None:
    for c in crits:
        for state, (ls, mk) in zip(STATES, ((":", "x"), ("--", "s"), ("-", "o")), strict=True):
            pts = sorted((r[xkey], 100 * r["test"]["accuracy"]) for r in rows
                         if r["criterion"] == c and r.get("state", "kd") == state)
            if pts:
                ax.plot(*zip(*pts, strict=True), color=colors[c], ls=ls, marker=mk, label=f"{c} {STATES[state]}")


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(doc["models"])
    fig, axes = plt.subplots(3, len(models), figsize=(6 * len(models), 13), squeeze=False)
    for col, model in enumerate(models):
        m = doc["models"][model]
        rows, state = m["rows"], m["headline"].get("state") or "kd"
        crits = sorted({r["criterion"] for r in rows})
        colors = dict(zip(crits, plt.cm.tab10.colors, strict=False))
        dense = rows[0]["test"]["accuracy"] + rows[0]["test"]["accuracy_drop_pts"]["value"] / 100 if rows else None
        recipe = [r for r in rows if r.get("state", "kd") == state]
        ax = axes[0][col]
        _curves(ax, rows, crits, colors, "speedup_ort")
        front = [recipe[i] for i in pareto_front([(r["speedup_ort"], r["test"]["accuracy"]) for r in recipe])]
        if front:
            ax.scatter([r["speedup_ort"] for r in front], [100 * r["test"]["accuracy"] for r in front], s=160,
                       facecolors="none", edgecolors="k", label=f"Pareto front ({STATES.get(state, state)})")
        ax.set_title(f"{model}: test accuracy vs measured speedup")
        ax = axes[1][col]
        for c in crits:
            pts = sorted((r["speedup_ort"], r["test"]["worst_sensitivity_drop_pts"]) for r in recipe
                         if r["criterion"] == c)
            for x, w in pts:
                ci = w.get("ci") or [w["value"], w["value"]]
                ax.errorbar(x, w["value"], yerr=[[w["value"] - ci[0]], [ci[1] - w["value"]]], color=colors[c],
                            fmt="o", capsize=2)
            if pts:
                ax.plot([p[0] for p in pts], [p[1]["value"] for p in pts], color=colors[c], label=c)
        ax.axhline(GATE_SENS, color="grey", ls="--", lw=0.8, label=f"gate {GATE_SENS:g} pts")
        ax.set_title(f"{model}: worst sens. drop vs speedup ({STATES.get(state, state)})")
        ax.set_ylabel("worst sensitivity drop, pts (95 % CI)")
        _curves(axes[2][col], rows, crits, colors, "macs_ratio")
        axes[2][col].set_title(f"{model}: test accuracy vs MACs")
        for row, ax in enumerate(axes[:, col]):
            if dense is not None and row != 1:
                ax.axhline(100 * dense, color="k", lw=0.8, label="dense")
            ax.set_xlabel("MACs reduction (dense/pruned)" if row == 2 else "measured ORT batch-1 speedup (dense/pruned)")
            if row != 1:
                ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
