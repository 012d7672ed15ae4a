"""Does a teacher pool leave room for per-instance choice? A verdict from the pool's dev accuracies, before any RL.

Learning which teacher each instance should follow pays only where the teachers' strengths differ by instance. A
siloed pool says so before any student is trained: its *silo routing* (every dev row to the expert of its own
silo) against its *best single teacher*. Both are measured on the dev split when the pool is built. On `tweets`
the experts' topics have label habits of their own, and routing beats the best expert by 16 points. Where k-means
silos cut single-domain text, every expert is about as good everywhere, and routing gains nothing. Then the bench's
per-instance margin (oracle − best fixed weighting) is at or below zero, whatever the agent.
docs/tasks-and-teachers.md has the verdict against the bench's margins on the tasks measured.

The verdict compares teachers, not students: the student's margin also depends on what distillation adds over its
gold labels. It is a screen for an hour of benchmarking, not a prediction of the margin.
"""

from __future__ import annotations

import dataclasses

#: routing must beat the best single teacher on dev by this many accuracy points for the verdict "headroom"
HEADROOM_POINTS = 2.0


@dataclasses.dataclass
class Headroom:
    """A pool's dev accuracies that bear on per-instance choice (fractions in [0, 1]).

    :param best_teacher: the name of the best single teacher on dev.
    :param best_single: its dev accuracy.
    :param routed: every dev row to its own silo's expert (None: the pool has no silo experts).
    :param any_right: dev rows that some teacher gets right: what a per-row choice with the gold label (the
        gold-label oracle) would reach, an upper bound that no label-free choice reaches (None: not recorded).
    :param silos: how the silos were made: ``"column"`` (a column of the task) or ``"kmeans"``.
    """

    best_teacher: str
    best_single: float
    routed: float | None
    any_right: float | None = None
    silos: str | None = None

    @property
    def gap(self) -> float | None:
        """Silo routing minus the best single teacher, in accuracy points (None without silo experts)."""
        return None if self.routed is None else 100.0 * (self.routed - self.best_single)

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
                    silos=(manifest.get("silos") or {}).get("kind"))


def verdict_lines(headroom: Headroom) -> list[str]:
    """The verdict in plain words, with the numbers it rests on."""
    h = headroom
    lines = [f"per-instance headroom (dev accuracy): best single teacher {h.best_single:.1%} ({h.best_teacher})"
             + ("" if h.routed is None else f", silo routing {h.routed:.1%}")
             + ("" if h.any_right is None else f", some teacher right (gold-label oracle) {h.any_right:.1%}")]
    if h.verdict == "unknown":
        lines.append("verdict: unknown: this pool has no silo experts to route to, so its dev scores cannot say "
                     "whether per-instance choice pays")
    elif h.verdict == "headroom":
        lines.append(f"verdict: headroom: routing each row to its silo's expert beats the best single teacher by "
                     f"{h.gap:+.1f} points on dev; per-instance choice can pay on this pool")
    else:
        how = "k-means clusters" if h.silos == "kmeans" else "silos"
        lines.append(f"verdict: {h.verdict}: routing each row to its silo's expert gains {h.gap:+.1f} points over the "
                     f"best single teacher on dev: the experts of these {how} are close to interchangeable, and a "
                     "bench will likely show no per-instance margin. Try silos that mark domains whose text maps to "
                     "labels differently (a domain column: --silo-column), fewer silos, or teachers of other kinds")
    return lines
