"""Tables of results: mean ± std over seeds, confidence intervals, paired comparisons, and the scores RL papers
report (normalised score, IQM, probability of improvement; computed in :mod:`agents.experiments.scores`)."""

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


def _paired_cells(frame: pd.DataFrame, agent: str, reference: str) -> tuple[str, str]:
    """The table cells "Δ vs reference" (points) and "p (paired t)" of ``agent``; "-" for the reference itself."""
    if agent == reference or reference not in set(frame["agent"]):
        return "-", "-"
    d, pv, _ = paired_comparison(frame, agent, reference)
    return f"{100 * d:+.2f}", f"{pv:.3f}"


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` with agents in order of first appearance and each agent's rows by seed, so that the
    same cells give the same report whatever order they were run or merged in."""
    order = {agent: i for i, agent in enumerate(frame["agent"].drop_duplicates())}
    return frame.iloc[np.lexsort((frame["seed"].to_numpy(), frame["agent"].map(order).to_numpy()))]


def bench_title(command_name: str, task: str, env: str, scenario: str, steps: int, protocol: dict) -> str:
    """The heading of a bench's ``results.md``.

    :param command_name: ``bench`` or ``demo``.
    :param task: the task as given on the command line (``--task``).
    :param protocol: ``protocol`` and, for train-eval, ``train_students`` and ``eval_students``
        (:func:`agents.experiments.common.protocol_kwargs_from`).
    """
    title = f"kd-gym {command_name}: {task}, {env} env, scenario {scenario}, {steps} student steps"
    if protocol.get("protocol", "online") != "online":
        title += (f", train-eval protocol ({protocol['train_students']} training students, "
                  f"{protocol['eval_students']} evaluation students per seed)")
    return title


def bench_report(frame: pd.DataFrame, command: str | None, title: str, reference: str = "uniform",
                 metric_label: str = "metric", heading: str = "#") -> str:
    """Markdown: per agent test metric mean ± std and 95% CI, dev metric, paired comparison with ``reference``;
    the normalised score, its IQM and the probability of improvement over ``reference`` (:func:`scores_lines`);
    the margins (:func:`headroom_lines`).

    :param frame: one row per (agent, seed) cell of one scenario with ``dev_metric``, ``test_metric`` (in [0, 1])
        and ``wall_s``.
    :param command: the command that reproduces the table (written under it; None: no command line).
    :param title: the heading.
    :param metric_label: the task's metric (``env.metric_name``: accuracy, f1, ...), for the column names.
    :param heading: the markdown heading level of the title.
    """
    frame = canonical_order(frame)
    # train-eval cells: the student steps an agent spent learning, beside its result
    cost = "train_student_steps" in frame and frame["train_student_steps"].notna().any()
    signal = _has_learns_from(frame)
    lines = [f"{heading} {title}", "",
             "| agent |" + (" learns from |" if signal else "") + f" test {metric_label} (%) mean ± std | test 95% CI | dev {metric_label} (%) mean ± std | seeds | "
             f"Δ test vs {reference} (points) | p (paired t) | wall s / cell |" + (" student steps to learn |" if cost else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if signal else "") + ("---|" if cost else "")]
    for agent, group in frame.groupby("agent", sort=False):
        test_mean, test_std, half = mean_ci(group["test_metric"] * 100)
        dev_mean, dev_std, _ = mean_ci(group["dev_metric"] * 100)
        delta, p = _paired_cells(frame, agent, reference)
        learns = f" {_learns_from(group)} |" if signal else ""
        lines.append(f"| {agent} |{learns} {test_mean:.2f} ± {test_std:.2f} | [{test_mean - half:.2f}, {test_mean + half:.2f}] "
                     f"| {dev_mean:.2f} ± {dev_std:.2f} | {len(group)} | {delta} | {p} | {group['wall_s'].mean():.1f} |"
                     + (f" {group['train_student_steps'].fillna(0).mean():,.0f} |" if cost else ""))
    lines += scores_lines(frame, reference)
    lines += headroom_lines(frame)
    if command is not None:
        lines += ["", f"Command: `{command}`"]
    return "\n".join([*lines, ""])


TOP = "oracle"
"""the agent whose mean test metric is 100% of the normalised score (``uniform``'s is 0%)"""


def _interval(point: float, low: float, high: float, digits: int, sign: str = "") -> str:
    if np.isnan(point):
        return "-"
    bounds = "" if np.isnan(low) else f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return f"{point:{sign}.{digits}f}{bounds}"


def scores_table(scores: pd.DataFrame, reference: str, normalised: bool, improvement: bool,
                 with_tasks: bool = False) -> list[str]:
    """Markdown rows of :func:`agents.experiments.scores.rliable_scores`: the normalised columns and/or the
    probability of improvement; ``with_tasks`` adds the scenarios and runs behind each row."""
    header = ["agent", *(["scenarios / runs normalised"] if with_tasks else [])]
    if normalised:
        header += ["normalised test score (%) mean", "IQM normalised (%) [95% CI]"]
    if improvement:
        header += [f"P(test > {reference}) [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in scores.itertuples():
        cells = [row.agent, *([f"{row.tasks} / {row.runs}"] if with_tasks else [])]
        if normalised:
            cells += ["-" if np.isnan(row.normalised_mean) else f"{row.normalised_mean:+.1f}",
                      _interval(row.iqm, row.iqm_low, row.iqm_high, 1, sign="+")]
        if improvement:
            cells += [_interval(row.improvement, row.improvement_low, row.improvement_high, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


SCORES_NOTE = ("Normalised score: 100 (test - U) / (O - U), with U and O the mean test metric of {reference} and "
               "{top} over the seeds of the scenario (0% = {reference}, 100% = {top}); IQM: the mean of the middle "
               "50% of the runs' normalised scores; P(test > {reference}): the probability that a run of the agent "
               "beats a run of {reference} on test (ties count half; runs unpaired, unlike the paired t-test). "
               "95% stratified-bootstrap CIs ({reps} resamples, seed {seed}); rliable's definitions.")


def scores_lines(frame: pd.DataFrame, reference: str = "uniform", top: str = TOP, with_tasks: bool = False) -> list[str]:
    """The rliable table of ``frame`` (one scenario, or several for the aggregate with ``with_tasks``), with a line
    on what it shows and on the columns left out when ``reference`` or ``top`` rows are missing or ``top`` does not
    beat ``reference``."""
    from agents.experiments.scores import BOOTSTRAP_REPS, BOOTSTRAP_SEED, normalisation, rliable_scores

    agents = set(frame["agent"])
    improvement = reference in agents
    scenarios = frame["scenario"].fillna("default").unique() if "scenario" in frame else ["default"]
    anchored = normalisation(frame, reference, top)
    notes = []
    if reference not in agents or top not in agents:
        missing = " and ".join(a for a in (reference, top) if a not in agents)
        notes.append(f"Normalised scores and their IQM are left out: they need the {reference} and {top} rows "
                     f"(missing: {missing}).")
    elif len(anchored) < len(scenarios):
        left = [s for s in scenarios if s not in anchored]
        notes.append(f"{top} does not beat {reference} on the mean test metric of scenario(s) {', '.join(left)}: "
                     "normalised scores there are left out (a gap <= 0 cannot scale them).")
    if not improvement:
        notes.append(f"The probability of improvement is left out: it needs the {reference} rows.")
    normalised = bool(anchored)
    if not (normalised or improvement):
        return ["", *notes]
    scores = rliable_scores(frame, reference, top)
    note = SCORES_NOTE.format(reference=reference, top=top, reps=BOOTSTRAP_REPS, seed=BOOTSTRAP_SEED)
    if with_tasks:
        note += (f" Over scenarios: the IQM pools the runs of every scenario counted in the second column; "
                 f"P(test > {reference}) is the mean over every scenario with {reference} rows.")
    return ["", *scores_table(scores, reference, normalised, improvement, with_tasks), "", note, *notes]


def aggregate_report(frame: pd.DataFrame, reference: str = "uniform", top: str = TOP, heading: str = "##") -> str:
    """Markdown: the rliable table aggregated over scenarios (tasks) and seeds (runs) of results from several
    benches (e.g. ``default``, ``noisy-teacher``, ``specialists``), as RL papers aggregate over games.

    :param frame: rows of several benches' ``results.csv``, with their ``scenario`` column; one config per
        (scenario, agent) (see :func:`agents.experiments.grid.read_results`).
    """
    scenarios = list(frame["scenario"].fillna("default").drop_duplicates())
    lines = [f"{heading} All scenarios: {', '.join(scenarios)} (tasks: scenarios, runs: seeds)",
             *scores_lines(canonical_order(frame), reference, top, with_tasks=True)]
    return "\n".join([*lines, ""])


FIXED_WEIGHTINGS = ("uniform", "best_teacher", "confidence")


def headroom_lines(frame: pd.DataFrame) -> list[str]:
    """The margins that say whether a benchmark can rank agents (test points, means over seeds), for the agents
    present: distillation pays (oracle - no_kd, and beside it best fixed weighting - no_kd), the choice of weighting
    pays (oracle - uniform), per-instance choice pays (oracle - best fixed). The best fixed weighting is the best
    mean of uniform, best_teacher and confidence; without an oracle row, the best fixed weighting stands in for it."""
    means = {agent: 100 * group["test_metric"].mean() for agent, group in frame.groupby("agent", sort=False)}
    fixed = {agent: means[agent] for agent in FIXED_WEIGHTINGS if agent in means}
    if not fixed:
        return []
    best_name = max(fixed, key=fixed.get)
    best = fixed[best_name]
    top_name = "oracle" if "oracle" in means else f"best fixed ({best_name})"
    top = means.get("oracle", best)
    rows = []
    if "no_kd" in means:
        if "oracle" in means:
            rows.append(("distillation pays", "oracle - no_kd", top - means["no_kd"]))
        rows.append(("distillation pays, fixed weights", f"best fixed ({best_name}) - no_kd", best - means["no_kd"]))
    if "uniform" in means:
        rows.append(("the choice of weighting pays", f"{top_name} - uniform", top - means["uniform"]))
    if "oracle" in means:
        rows.append(("per-instance choice pays", f"oracle - best fixed ({best_name})", means["oracle"] - best))
    if not rows:
        return []
    return ["", "| margin | definition | test points |", "|---|---|---|",
            *(f"| {name} | {definition} | {value:+.2f} |" for name, definition, value in rows)]


def _has_learns_from(frame: pd.DataFrame) -> bool:
    """Whether the cells record what each agent learns from (RunResult's ``learns_from``; older cells do not)."""
    return "learns_from" in frame and frame["learns_from"].notna().any()


def _learns_from(group: pd.DataFrame) -> str:
    """What an agent's cells say it learns from ('-' where they do not say)."""
    values = group["learns_from"].dropna() if "learns_from" in group else []
    return str(values.iloc[0]) if len(values) else "-"


def readme_table(frame: pd.DataFrame, reference: str = "uniform") -> str:
    """The README's results block from a bench's ``results.csv`` rows: per agent test mean ± std, the paired
    difference with ``reference`` and its p-value, the normalised score and the wall time per cell; then the
    margins (:func:`headroom_lines`)."""
    frame = canonical_order(frame)
    normalised = frame.groupby("agent", sort=False)["test_metric"].mean()
    low, high = normalised.get(reference, np.nan), normalised.get(TOP, np.nan)
    signal = _has_learns_from(frame)
    lines = ["| agent |" + (" learns from |" if signal else "") + f" test accuracy (%) mean ± std | Δ vs {reference} "
             "(points) | p (paired t) | normalised (%) | wall s / cell |", "|---|---|---|---|---|---|" + ("---|" if signal else "")]
    for agent, group in frame.groupby("agent", sort=False):
        mean, std, _ = mean_ci(group["test_metric"] * 100)
        delta, p = _paired_cells(frame, agent, reference)
        score = 100 * (normalised[agent] - low) / (high - low) if np.isfinite(high - low) and high != low else np.nan
        learns = f" {_learns_from(group)} |" if signal else ""
        lines.append(f"| {agent} |{learns} {mean:.2f} ± {std:.2f} | {delta} | {p} | "
                     f"{'-' if np.isnan(score) else f'{score:+.1f}'} | {group['wall_s'].mean():.1f} |")
    return "\n".join(lines + headroom_lines(frame))
