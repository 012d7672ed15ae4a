"""Tables of results: mean ± std over seeds, confidence intervals, paired comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, std, half-width of the t confidence interval) of ``values``; std and CI are 0 for one value."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0, 0.0
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * std / np.sqrt(len(values)))
    return float(values.mean()), std, half


def paired_comparison(frame: pd.DataFrame, agent: str, reference: str = "uniform") -> tuple[float, float, int]:
    """(mean difference in test metric agent - reference, two-sided paired t-test p-value, pairs) over shared seeds."""
    a = frame[frame["agent"] == agent].set_index("seed")["test_metric"]
    b = frame[frame["agent"] == reference].set_index("seed")["test_metric"]
    shared = a.index.intersection(b.index)
    if len(shared) < 2:
        return float("nan"), float("nan"), len(shared)
    diff = (a[shared] - b[shared]).to_numpy()
    if np.allclose(diff, diff[0]):
        return float(diff.mean()), (1.0 if diff[0] == 0 else 0.0), len(shared)
    return float(diff.mean()), float(stats.ttest_rel(a[shared], b[shared]).pvalue), len(shared)


def bench_report(frame: pd.DataFrame, command: str, title: str, reference: str = "uniform",
                 metric_label: str = "metric") -> str:
    """Markdown: per agent test metric mean ± std and 95% CI, dev metric, paired comparison with ``reference``.

    :param frame: one row per (agent, seed) cell with ``dev_metric``, ``test_metric`` (in [0, 1]) and ``wall_s``.
    :param command: the command that reproduces the table (written under it).
    :param title: the heading.
    :param metric_label: the task's metric (``env.metric_name``: accuracy, f1, ...), for the column names.
    """
    lines = [f"# {title}", "",
             f"| agent | test {metric_label} (%) mean ± std | test 95% CI | dev {metric_label} (%) mean ± std | seeds | "
             f"Δ test vs {reference} (points) | p (paired t) | wall s / cell |",
             "|---|---|---|---|---|---|---|---|"]
    for agent, group in frame.groupby("agent", sort=False):
        test_mean, test_std, half = mean_ci(group["test_metric"] * 100)
        dev_mean, dev_std, _ = mean_ci(group["dev_metric"] * 100)
        if agent == reference or reference not in set(frame["agent"]):
            delta, p = "-", "-"
        else:
            d, pv, _ = paired_comparison(frame, agent, reference)
            delta, p = f"{100 * d:+.2f}", f"{pv:.3f}"
        lines.append(f"| {agent} | {test_mean:.2f} ± {test_std:.2f} | [{test_mean - half:.2f}, {test_mean + half:.2f}] "
                     f"| {dev_mean:.2f} ± {dev_std:.2f} | {len(group)} | {delta} | {p} | {group['wall_s'].mean():.1f} |")
    lines += headroom_lines(frame)
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


FIXED_WEIGHTINGS = ("uniform", "best_teacher", "confidence")


def headroom_lines(frame: pd.DataFrame) -> list[str]:
    """The three margins that say whether a benchmark can rank agents (test points, means over seeds), for the
    agents present: distillation pays (best fixed weighting - no_kd), the choice of weighting pays
    (max(oracle, best fixed) - uniform), per-instance choice pays (oracle - best fixed). The best fixed weighting is
    the best mean of uniform, best_teacher and confidence."""
    means = {agent: 100 * group["test_metric"].mean() for agent, group in frame.groupby("agent", sort=False)}
    fixed = {agent: means[agent] for agent in FIXED_WEIGHTINGS if agent in means}
    if not fixed:
        return []
    best_name = max(fixed, key=fixed.get)
    best = fixed[best_name]
    rows = []
    if "no_kd" in means:
        rows.append(("distillation pays", f"best fixed ({best_name}) - no_kd", best - means["no_kd"]))
    if "uniform" in means:
        top = max(best, means.get("oracle", best))
        rows.append(("the choice of weighting pays", "max(oracle, best fixed) - uniform", top - means["uniform"]))
    if "oracle" in means:
        rows.append(("per-instance choice pays", f"oracle - best fixed ({best_name})", means["oracle"] - best))
    if not rows:
        return []
    return ["", "| margin | definition | test points |", "|---|---|---|",
            *(f"| {name} | {definition} | {value:+.2f} |" for name, definition, value in rows)]
