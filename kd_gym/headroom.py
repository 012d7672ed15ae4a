"""Does a teacher pool leave room for per-instance choice? A verdict from the pool's dev accuracies, before any RL.

Learning which teacher each instance should follow pays only where the teachers' strengths differ by instance. A
siloed pool says so before any student is trained. Its *silo routing* sends every dev row to the expert of its own
silo. That is set against the *best fixed weighting* of the teachers: the best single teacher, or all of them with
equal weights, whichever is better. Both are measured on the dev split when the pool is built.
- On `tweets` the experts' topics have label habits of their own, and routing beats the best fixed weighting by 16
  points.
- Where k-means silos cut single-domain text, every expert is about as good everywhere, and routing gains nothing.
  The bench's per-instance margin (oracle − best fixed weighting) is then at or below zero, whatever the agent.

The verdict compares teachers, not students: what routing gains a student also depends on what it can learn from the
better targets. The thresholds (:data:`HEADROOM_POINTS`) were set from the five pools measured in
docs/tasks-and-teachers.md ("Where per-instance choice pays"), with the bench's margins side by side. It is a
screen before an hour of benchmarking, not a prediction of the margin.
"""

from __future__ import annotations

import dataclasses

#: routing must beat the best fixed weighting on dev by this many accuracy points for the verdict "headroom" (on
#: `snippets`, a gain of 4.8 gave the student a margin of only +0.9)
HEADROOM_POINTS = 5.0


@dataclasses.dataclass
class Headroom:
    """A pool's dev accuracies that bear on per-instance choice (fractions in [0, 1]).

    :param best_teacher: the name of the best single teacher on dev.
    :param best_single: its dev accuracy.
    :param routed: every dev row to its own silo's expert (None: the pool has no silo experts).
    :param any_right: dev rows that some teacher gets right: what a per-row choice with the gold label (the
        gold-label oracle) would reach, an upper bound that no label-free choice reaches (None: not recorded).
    :param equal_weights: the dev accuracy of the teachers' mean probabilities (None: not recorded).
    :param silos: how the silos were made: ``"column"`` (a column of the task) or ``"kmeans"``.
    """

    best_teacher: str
    best_single: float
    routed: float | None
    any_right: float | None = None
    equal_weights: float | None = None
    silos: str | None = None

    @property
    def best_fixed(self) -> float:
        """The best fixed weighting's dev accuracy: the best single teacher or equal weights."""
        return max(self.best_single, self.equal_weights or 0.0)

    @property
    def gap(self) -> float | None:
        """Silo routing minus the best fixed weighting, in accuracy points (None without silo experts)."""
        return None if self.routed is None else 100.0 * (self.routed - self.best_fixed)

    @property
    def verdict(self) -> str:
        """``headroom`` (routing gains at least :data:`HEADROOM_POINTS`), ``little`` (it gains less), ``none`` (it
        gains nothing), or ``unknown`` (no silo experts to route to)."""
        if self.gap is None:
            return "unknown"
        return "headroom" if self.gap >= HEADROOM_POINTS else ("none" if self.gap <= 0.0 else "little")


def pool_headroom(manifest: dict) -> Headroom:
    """The :class:`Headroom` of a pool from its ``pool.json`` (``kd-gym teachers build``)."""
    teachers = manifest["teachers"]
    best = max(teachers, key=lambda t: t["dev"]["accuracy"])
    by_silo = manifest.get("dev_by_silo") or {}
    return Headroom(best_teacher=best["name"], best_single=float(best["dev"]["accuracy"]),
                    routed=by_silo.get("routed"), any_right=by_silo.get("any_right"),
                    equal_weights=by_silo.get("equal_weights"), silos=(manifest.get("silos") or {}).get("kind"))


def verdict_lines(headroom: Headroom) -> list[str]:
    """The verdict in plain words, with the numbers it rests on."""
    h = headroom
    lines = [f"per-instance headroom (dev accuracy): best single teacher {h.best_single:.1%} ({h.best_teacher})"
             + ("" if h.equal_weights is None else f", equal weights {h.equal_weights:.1%}")
             + ("" if h.routed is None else f", silo routing {h.routed:.1%}")
             + ("" if h.any_right is None else f", some teacher right (gold-label oracle) {h.any_right:.1%}")]
    if h.verdict == "unknown":
        lines.append("verdict: unknown: this pool has no silo experts to route to, so its dev scores cannot say "
                     "whether per-instance choice pays")
    elif h.verdict == "headroom":
        lines.append(f"verdict: headroom: routing each row to its silo's expert beats the best fixed weighting by "
                     f"{h.gap:+.1f} points on dev; per-instance choice can pay on this pool")
    else:
        how = "k-means clusters" if h.silos == "kmeans" else "silos"
        why = (f"under {HEADROOM_POINTS:.0f} points (the one pool measured in this band, snippets at +4.8 on dev, "
               "gave the student a per-instance margin of +0.9)"
               if h.verdict == "little" else f"the experts of these {how} are close to interchangeable, and a bench "
               "will likely show no per-instance margin")
        lines.append(f"verdict: {h.verdict}: routing each row to its silo's expert gains {h.gap:+.1f} points over the "
                     f"best fixed weighting on dev: {why}. Try silos that mark domains whose text maps to labels "
                     "differently (a domain column: --silo-column), fewer silos, or teachers of other kinds")
    return lines
