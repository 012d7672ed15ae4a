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


def summary_table(frame: pd.DataFrame, metric_label: str = "accuracy") -> str:
    """A markdown table: per agent, dev and test metric (mean ± std over seeds, in %), seeds, mean wall time."""
    lines = [f"| agent | dev {metric_label} (%) | test {metric_label} (%) | seeds | wall s / run |",
             "|---|---|---|---|---|"]
    for agent, group in frame.groupby("agent", sort=False):
        dev_mean, dev_std, _ = mean_ci(group["dev_metric"] * 100)
        test_mean, test_std, _ = mean_ci(group["test_metric"] * 100)
        lines.append(f"| {agent} | {dev_mean:.2f} ± {dev_std:.2f} | {test_mean:.2f} ± {test_std:.2f} | {len(group)} "
                     f"| {group['wall_s'].mean():.1f} |")
    return "\n".join(lines)
