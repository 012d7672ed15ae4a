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
