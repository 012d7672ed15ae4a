"""Scores as RL papers report them (Agarwal et al., NeurIPS 2021, "Deep RL at the Edge of the Statistical Precipice",
the ``rliable`` library): a normalised score per run, its interquartile mean (IQM) and the probability of improvement
over a reference, each with a 95% stratified-bootstrap confidence interval.

Tasks are scenarios (the ``scenario`` column of ``results.csv``), runs are seeds. The normalised score of a run is
``100 * (test - U) / (O - U)`` in %, where ``U`` and ``O`` are the mean test metric of ``uniform`` and ``oracle`` over
the seeds of the run's scenario (per-task constants, as Atari's human-normalised scores use one random and one
human score per game; per-seed constants would let a seed where the oracle barely beats uniform blow the score up).
0% is equal-weight KD, 100% is the oracle.

The point estimates are rliable's own (:func:`rliable.metrics.aggregate_iqm`,
:func:`rliable.metrics.probability_of_improvement`). The bootstrap is :func:`scipy.stats.bootstrap` with one sample
per task (and per agent), each resampled on its own: rliable's stratified bootstrap (``StratifiedBootstrap``,
``StratifiedIndependentBootstrap``), run on vectorised forms of the same statistics. ``rliable.library`` itself
cannot be used: it imports ``arch``, whose releases that rliable 1.2.0 accepts (< 8) fail to import under pandas 3
(``pandas.util._decorators.deprecate_kwarg`` changed), and arch 8 no longer takes the ``random_state`` keyword that
``rliable.library.get_interval_estimates`` passes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from rliable import metrics
from scipy import stats

BOOTSTRAP_REPS = 2000
"""bootstrap resamples per interval: enough for stable 95% percentile bounds at the precision of the tables"""
BOOTSTRAP_SEED = 0
"""the seed of every bootstrap, so that a report is the same every time it is written"""


def normalisation(frame: pd.DataFrame, reference: str = "uniform", top: str = "oracle") -> dict[str, tuple[float, float]]:
    """Per scenario, the (0%, 100%) anchors of the normalised score: the mean test metric of ``reference`` and of
    ``top`` over that scenario's seeds. Scenarios lacking either agent, or where ``top`` does not beat
    ``reference``, are left out (a score normalised by a gap <= 0 has no meaning).

    :param frame: rows of (``scenario``, ``agent``, ``seed``, ``test_metric``); without ``scenario`` all rows are
        one scenario, ``default``.
    """
    anchors = {}
    for scenario, rows in _with_scenario(frame).groupby("scenario", sort=False):
        means = rows.groupby("agent")["test_metric"].mean()
        if reference in means and top in means and means[top] > means[reference]:
            anchors[scenario] = (float(means[reference]), float(means[top]))
    return anchors


def normalised_scores(frame: pd.DataFrame, reference: str = "uniform", top: str = "oracle") -> pd.Series:
    """``100 * (test_metric - U) / (O - U)`` for every row (%), with the anchors ``(U, O)`` of its scenario from
    :func:`normalisation`; NaN for rows of a scenario without anchors. Indexed like ``frame``."""
    frame = _with_scenario(frame)
    anchors = normalisation(frame, reference, top)
    low = frame["scenario"].map(lambda s: anchors.get(s, (np.nan, np.nan))[0])
    high = frame["scenario"].map(lambda s: anchors.get(s, (np.nan, np.nan))[1])
    return (100 * (frame["test_metric"] - low) / (high - low)).rename("normalised_score")


def _iqm(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """The IQM (25% trimmed mean) of all runs of all tasks; ``tasks[m]`` is (..., runs of task m)."""
    return stats.trim_mean(np.concatenate(tasks, axis=axis), proportiontocut=0.25, axis=axis)


def _improvement(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 per task, averaged over tasks: ``tasks`` is (x_1, ..., x_M, y_1, ..., y_M), each
    (..., runs). The Mann-Whitney U statistic over nx * ny, as :func:`rliable.metrics.probability_of_improvement`
    computes it one task at a time."""
    half = len(tasks) // 2
    per_task = [((x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])).mean((-2, -1))
                for x, y in zip(tasks[:half], tasks[half:])]
    return np.mean(per_task, axis=0)


def _interval(samples: tuple[np.ndarray, ...], statistic, reps: int, seed: int) -> tuple[float, float]:
    """The 95% percentile interval of ``statistic`` under the stratified bootstrap: every sample (the runs of one
    task) resampled with replacement on its own. (nan, nan) when a sample has fewer than two runs."""
    if reps <= 0 or min(len(s) for s in samples) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # a sample of equal values gives a degenerate (but correct) interval
        warnings.simplefilter("ignore")
        result = stats.bootstrap(samples, statistic, n_resamples=reps, method="percentile", vectorized=True,
                                 paired=False, confidence_level=0.95, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def iqm(tasks: list[np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(IQM, 95% CI low, CI high) of scores over runs and tasks, with :func:`rliable.metrics.aggregate_iqm`.

    :param tasks: one 1-D array of run scores per task (tasks may have different numbers of runs).
    """
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    point = float(metrics.aggregate_iqm(np.concatenate(tasks)[:, None]))
    return (point, *_interval(tuple(tasks), _iqm, reps, seed))


def probability_of_improvement(x: list[np.ndarray], y: list[np.ndarray], reps: int = BOOTSTRAP_REPS,
                               seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(P(X > Y), 95% CI low, CI high): the probability that a run of X on a task beats a run of Y on that task
    (ties count half), averaged over tasks, with :func:`rliable.metrics.probability_of_improvement`. Runs are not
    paired: every run of X meets every run of Y.

    :param x, y: one 1-D array of run scores per task, in the same task order.
    """
    if len(x) != len(y):
        raise ValueError(f"probability of improvement needs the same tasks for both: got {len(x)} and {len(y)}")
    x, y = [np.asarray(t, dtype=float) for t in x], [np.asarray(t, dtype=float) for t in y]
    point = float(np.mean([metrics.probability_of_improvement(a[:, None], b[:, None]) for a, b in zip(x, y)]))
    return (point, *_interval((*x, *y), _improvement, reps, seed))


def _with_scenario(frame: pd.DataFrame) -> pd.DataFrame:
    if "scenario" in frame:
        return frame.assign(scenario=frame["scenario"].fillna("default"))
    return frame.assign(scenario="default")


def _runs(frame: pd.DataFrame, agent: str, column: str, scenarios: list[str]) -> list[np.ndarray]:
    rows = frame[frame["agent"] == agent]
    return [rows[rows["scenario"] == s].sort_values("seed")[column].to_numpy(dtype=float) for s in scenarios]


def rliable_scores(frame: pd.DataFrame, reference: str = "uniform", top: str = "oracle",
                   reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per agent, over the scenarios (tasks) and seeds (runs) of ``frame``: the normalised score (mean over all its
    runs, %), its IQM with 95% CI, and the probability of improvement of its test metric over ``reference``'s with
    95% CI.

    An agent's IQM uses the scenarios that have both anchors (:func:`normalisation`); its probability of
    improvement uses the scenarios where it and ``reference`` both have rows (the test metric, so no anchor is
    needed: the probability is the same for any increasing rescaling of a task's scores). Values that cannot be
    computed are NaN.

    :param frame: rows of (``agent``, ``seed``, ``test_metric``, optional ``scenario``), as in ``results.csv``.
    :returns: one row per agent (in order of first appearance) with ``normalised_mean``, ``iqm``, ``iqm_low``,
        ``iqm_high``, ``improvement``, ``improvement_low``, ``improvement_high`` (a probability in [0, 1]),
        ``tasks`` and ``runs`` (the scenarios and seeds behind the IQM).
    """
    frame = _with_scenario(frame)
    frame = frame.assign(normalised_score=normalised_scores(frame, reference, top))
    anchored = list(normalisation(frame, reference, top))
    rows = []
    for agent in frame["agent"].drop_duplicates():
        has = set(frame.loc[frame["agent"] == agent, "scenario"])
        row = {"agent": agent, "normalised_mean": np.nan, "iqm": np.nan, "iqm_low": np.nan, "iqm_high": np.nan,
               "improvement": np.nan, "improvement_low": np.nan, "improvement_high": np.nan, "tasks": 0, "runs": 0}
        tasks = [s for s in anchored if s in has]
        if tasks:
            normalised = _runs(frame, agent, "normalised_score", tasks)
            row["normalised_mean"] = float(np.concatenate(normalised).mean())
            row["iqm"], row["iqm_low"], row["iqm_high"] = iqm(normalised, reps, seed)
            row["tasks"], row["runs"] = len(tasks), sum(len(t) for t in normalised)
        shared = [s for s in frame["scenario"].drop_duplicates()
                  if s in has and s in set(frame.loc[frame["agent"] == reference, "scenario"])]
        if agent != reference and shared:
            row["improvement"], row["improvement_low"], row["improvement_high"] = probability_of_improvement(
                _runs(frame, agent, "test_metric", shared), _runs(frame, reference, "test_metric", shared), reps, seed)
        rows.append(row)
    return pd.DataFrame(rows)
