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


DIAGNOSTICS = (
    ("routing/expert_weight", "weight on the instance's silo expert (oracle: 1)"),
    ("agent/entropy", "keep/drop entropy (nats)"),
    ("agent/advantage_mean", "advantage, mean (normalised)"),
    ("agent/advantage_std", "advantage, std over actions"),
    ("agent/grad_norm", "policy gradient norm"),
    ("agent/keep_probability", "mean keep probability"),
)
"""The panels of :func:`plot_diagnostics`: a history column and its axis label."""


def plot_diagnostics(histories: dict[str, list[pd.DataFrame]], path: str | Path, title: str = "") -> list[str]:
    """The learning diagnostics of REINFORCE runs (:data:`DIAGNOSTICS`) against the env steps they learned over,
    one line per label (mean over its runs); panels whose column no run has are left out.

    :param histories: per label, the ``train_history.csv`` frames of its runs (train-eval) or ``history.csv``.
    :return: the columns plotted.
    """
    shown = [(c, label) for c, label in DIAGNOSTICS if any(c in r for runs in histories.values() for r in runs)]
    if not shown:
        return []
    cols = 3
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (column, label) in zip(axes.flat, shown):
        for name, runs in histories.items():
            runs = [r for r in runs if column in r and r[column].notna().any()]
            if not runs:
                continue
            n = min(len(r) for r in runs)
            values = np.stack([r[column].to_numpy(dtype=float)[:n] for r in runs])
            ax.plot(runs[0]["env_step"].to_numpy()[:n], np.nanmean(values, 0), label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("env steps learned")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [c for c, _ in shown]
