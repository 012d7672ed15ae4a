"""What a built teacher pool says about itself: its manifest (``pool.json``) with each teacher's dev accuracy per
silo, and the plain-text table ``kd-gym teachers show`` prints (:mod:`kd_gym.prepare.pool_build` builds the pool)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kd_gym.tasks import Task
from kd_gym.teachers import TeacherPool


def pool_manifest(folder: Path, task: Task) -> dict:
    """The ``pool.json`` of the pool in ``folder``, with its dev accuracies per silo brought up to date: a pool built
    before a figure of :func:`silo_accuracy` existed (the equal weights, the share some teacher gets right) gets it
    from its cached dev logits, once (the manifest is rewritten)."""
    manifest = json.loads((folder / "pool.json").read_text())
    by_silo = manifest.get("dev_by_silo")
    if by_silo is not None and not {"equal_weights", "any_right"} <= set(by_silo):
        teachers = TeacherPool.from_manifest(folder / "pool.json")
        manifest["dev_by_silo"] = silo_accuracy(folder, task, teachers, "dev")
        try:
            (folder / "pool.json").write_text(json.dumps(manifest, indent=2))
        except OSError:  # a read-only pool: the figures are computed again next time
            pass
    return manifest


def silo_accuracy(pool_dir: Path, task: Task, teachers: TeacherPool, split: str = "dev") -> dict:
    """Each teacher's accuracy on the rows of each silo of ``split`` (and the rows per silo), from the cached logits:
    ``{"rows": {silo: n}, "accuracy": {teacher: {silo: acc}}, "routed": acc, "any_right": acc,
    "equal_weights": acc}``, where ``routed`` sends every row to its own silo's expert (a teacher of the pool trained
    on that silo alone), ``any_right`` is the share of rows some teacher gets right (the gold-label oracle's reach)
    and ``equal_weights`` is the accuracy of the mean of the teachers' probabilities (T = 1)."""
    from kd_gym.defaults import pool_silos

    row_silos, expert_of = pool_silos(pool_dir, task, split)
    right = (teachers.logits(task, split).argmax(-1).numpy() == task.labels(split)[:, None])  # (N, K)
    recorded = json.loads((pool_dir / "pool.json").read_text()).get("silos", {}).get("names", [])
    names = [n for n in recorded if n in set(row_silos)] + sorted(set(row_silos) - set(recorded))
    accuracy = {t: {s: round(float(right[row_silos == s, k].mean()), 4) for s in names}
                for k, t in enumerate(teachers.names)}
    experts = {silo: k for k, silo in enumerate(expert_of) if silo is not None}
    routed = [right[i, experts[s]] for i, s in enumerate(row_silos) if s in experts]
    probs = torch.softmax(teachers.logits(task, split).float(), dim=-1)  # (N, K, C)
    mixed = probs.mean(1).argmax(-1).numpy() == task.labels(split)  # equal weights, at T = 1
    return {"rows": {s: int((row_silos == s).sum()) for s in names}, "accuracy": accuracy,
            "routed": round(float(np.mean(routed)), 4) if routed else None,
            "any_right": round(float(right.any(1).mean()), 4), "equal_weights": round(float(mixed.mean()), 4)}


def format_manifest(manifest: dict) -> str:
    """A plain-text table of the pool: each teacher's dev/test metric, its dev accuracy per silo with the headroom
    verdict (:mod:`kd_gym.headroom`), and the dev disagreement matrix."""
    from kd_gym.headroom import pool_headroom, verdict_lines

    names = [t["name"] for t in manifest["teachers"]]
    width = max(len(n) for n in names) + 2
    lines = [f"{'teacher':<{width}}{'kind':>10}{'rows':>8}{'dev acc':>9}{'test acc':>10}"]
    for t in manifest["teachers"]:
        r = t["recipe"]
        kind = f"{r.get('kind', 'minilm')}" + (f"-l{r['num_layers']}" if r.get("kind", "minilm") == "minilm" else "")
        lines.append(f"{t['name']:<{width}}{kind:>10}{t.get('rows', r.get('examples')) or '-':>8}"
                     f"{t['dev']['accuracy']:>9.4f}{t['test']['accuracy']:>10.4f}")
    by_silo = manifest.get("dev_by_silo")
    if by_silo:
        silos = list(by_silo["rows"])
        lines.append("")
        lines.append("dev accuracy per silo (rows)")
        lines.append(" " * width + "".join(f"{f'{s[:9]} ({n})':>18}" for s, n in by_silo["rows"].items()))
        for name in names:
            lines.append(f"{name:<{width}}" + "".join(f"{by_silo['accuracy'][name][s]:>18.4f}" for s in silos))
        if by_silo.get("routed") is not None:
            lines.append(f"every row to its own silo's expert: {by_silo['routed']:.4f}")
    lines.append("")
    lines.append("dev disagreement (share of instances where two teachers predict different labels)")
    lines.append(" " * width + "".join(f"{n[:12]:>14}" for n in names))
    for name, row in zip(names, manifest["dev_disagreement"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>14.3f}" for v in row))
    if by_silo:
        lines += ["", *verdict_lines(pool_headroom(manifest))]
    return "\n".join(lines)
