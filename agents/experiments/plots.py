"""Figures of a bench: learning curves and learned teacher weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(histories: dict[str, list[pd.DataFrame]], path: str | Path, title: str = "dev metric") -> None:
    """Dev metric (%) against student steps: one line per agent, the mean over seeds, a band of ± one std."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for agent, runs in histories.items():
        steps = runs[0]["student_step"].to_numpy()
        n = min(len(r) for r in runs)
        values = np.stack([r["dev_metric"].to_numpy()[:n] for r in runs]) * 100
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps[:n], mean, label=f"{agent} (n={len(runs)})")
        ax.fill_between(steps[:n], mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("student steps")
    ax.set_ylabel("dev metric on the reward subset (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weights(histories: dict[str, list[pd.DataFrame]], path: str | Path) -> None:
    """Mean normalised weight per teacher over training, one panel per agent (mean over seeds)."""
    agents = list(histories)
    if not agents:
        return
    cols = min(3, len(agents))
    rows = int(np.ceil(len(agents) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, agent in zip(axes.flat, agents):
        runs = histories[agent]
        n = min(len(r) for r in runs)
        steps = runs[0]["student_step"].to_numpy()[1:n]  # row 0 is the record before any step
        for column in [c for c in runs[0].columns if c.startswith("weight/")]:
            values = np.stack([r[column].to_numpy()[1:n] for r in runs]).mean(0)
            ax.plot(steps, values, label=column.removeprefix("weight/"))
        ax.set_title(agent)
        ax.set_xlabel("student steps")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("mean weight (rows normalised)")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(agents):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
