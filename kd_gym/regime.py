"""The student's regime: which training rows it learns from, which of them keep their gold label, and the
privileged oracle weighting of the default scenario.

- **Student rows**: the train rows that no teacher of the pool was trained on (a pool built by ``kd-gym teachers
  build`` lists them), so teacher rows, the student's rows, dev and test are disjoint; all train rows for a pool
  that does not say what it saw.
- **Gold labels**: with ``gold_labels=N``, N of the student rows (stratified by class, seeded by ``split_seed``)
  keep their gold label; the others are the transfer set: they learn from the teachers' mixture alone, and their
  labels are hidden from the observation. ``None`` (or N at least the number of student rows): every row keeps its
  label.
- **Oracle**: per instance, all weight on the teacher that gives its gold label the highest probability (ties:
  the first). It reads the labels of the transfer rows, so it is a privileged reference row (the ceiling of the
  normalised score), never an agent to compare fairly.
"""

from __future__ import annotations

import numpy as np
import torch

from kd_gym.data import KDData
from kd_gym.tasks import stratified_split


def student_regime(data: KDData, student_rows: np.ndarray, gold_labels: int | None, seed: int) -> KDData:
    """``data`` with its train split restricted to ``student_rows`` and the ``labelled`` mask set.

    :raises ValueError: when ``gold_labels`` < 1.
    """
    train = data.splits["train"].select(student_rows)
    n = len(train)
    if gold_labels is None or gold_labels >= n:  # a budget at least the size of the data: every label
        labelled = torch.ones(n, dtype=torch.bool)
    else:
        if gold_labels < 1:
            raise ValueError(f"gold_labels={gold_labels} is out of range; use 1..{n} (the student's training rows), "
                             "or None for all")
        taken, _ = stratified_split(train.labels.cpu().numpy(), gold_labels, np.random.default_rng(seed))
        labelled = torch.zeros(n, dtype=torch.bool)
        labelled[torch.as_tensor(taken)] = True
    train.labelled = labelled.to(train.labels.device)
    return KDData(data.task, data.teacher_names, {**data.splits, "train": train})


def gold_oracle_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) one-hot on the teacher with the highest probability on each row's gold label.

    :param teacher_logits: (N, K, C); :param labels: (N,).
    """
    gold = labels.view(-1, 1, 1).expand(-1, teacher_logits.shape[1], 1)
    probability = torch.softmax(teacher_logits.float(), -1).gather(-1, gold).squeeze(-1)  # (N, K)
    return torch.nn.functional.one_hot(probability.argmax(1), teacher_logits.shape[1]).float()


ORACLES = ("auto", "gold", "silo", "silo-gold", "silo-mix")
"""The privileged weightings of the default scenario (``EnvConfig.oracle``; definitions in docs/benchmark.md).
The silo oracles need a pool that says which silo each teacher was trained on and which silo each row is in
(``pool.json`` of ``kd-gym teachers build``); ``auto`` is ``silo`` for such a pool with at least one silo expert (the
strongest we measured on the siloed default), else ``gold``."""


def silo_oracle_weights(kind: str, teacher_logits: torch.Tensor, labels: torch.Tensor, row_silos: np.ndarray,
                        teacher_silos: list[str | None]) -> torch.Tensor:
    """(N, K) privileged weights that read each row's silo (and, but for ``silo``, its gold label):

    - ``silo``: all weight on the expert of the row's silo (the gold-label oracle's choice on a row whose silo has
      no expert);
    - ``silo-gold``: the silo's expert where it predicts the gold label, else the gold-label oracle's teacher;
    - ``silo-mix``: the silo's expert plus equal weight on every other teacher that predicts the gold label.

    :param row_silos: (N,) silo name per row; :param teacher_silos: (K,) the silo teacher k is the expert of (None:
        a generalist).
    """
    n, k = teacher_logits.shape[:2]
    gold = gold_oracle_weights(teacher_logits, labels)
    expert = torch.zeros(n, k)
    for j, silo in enumerate(teacher_silos):
        if silo is not None:
            expert[torch.as_tensor(row_silos == silo), j] = 1.0
    has_expert = expert.sum(1, keepdim=True) > 0
    if kind == "silo":
        return torch.where(has_expert, expert, gold)
    right = (teacher_logits.argmax(-1) == labels.view(-1, 1)).float()  # (N, K)
    expert_right = (expert * right).sum(1, keepdim=True) > 0
    if kind == "silo-gold":
        return torch.where(expert_right, expert, gold)
    if kind == "silo-mix":
        return torch.where(has_expert, expert + right * (1.0 - expert), gold)
    raise ValueError(f"oracle={kind!r} is not a silo oracle; use one of {ORACLES[1:]}")


def default_oracle(oracle: str, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   silos: tuple[np.ndarray, list[str | None]] | None) -> tuple[torch.Tensor, str]:
    """The default scenario's oracle weights (N, K) for the option ``oracle`` (:data:`ORACLES`), and which one it is.

    :param silos: ((N,) each row's silo, (K,) the silo each teacher is the expert of or None), from the pool's
        ``pool.json`` (:func:`kd_gym.defaults.pool_silos`); None when the pool does not say.
    :raises ValueError: for a silo oracle on a pool without silo experts.
    """
    has_experts = silos is not None and any(silo is not None for silo in silos[1])
    kind = ("silo" if has_experts else "gold") if oracle == "auto" else oracle
    if kind == "gold":
        return gold_oracle_weights(teacher_logits, labels), kind
    if not has_experts:
        raise ValueError(f"oracle={oracle!r} reads each instance's silo, but the pool does not say which silo each "
                         "teacher is the expert of (build it with `kd-gym teachers build`); use oracle='gold'")
    weights = silo_oracle_weights(kind, teacher_logits.cpu(), labels.cpu(), silos[0], silos[1])
    return weights.to(labels.device), kind
