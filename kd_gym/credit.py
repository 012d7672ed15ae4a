"""Per-decision rewards: what one instance's weights earned, computed by the env (docs/env.md, "Reward tiers").

Three tiers, from the true objective to a proxy:

- ``"return"``: the env's scalar reward (``reward=``, default ``dev_delta``); its episode return is the final
  student's dev gain. Every decision of a student shares it.
- ``"student_credit"``: each instance's share of the student's dev-loss change under the weights chosen, to first
  order, from the reward's dev subset (:meth:`kd_gym.student.StudentTrainer.credit`; ``info["student_credit"]``
  with ``credit=True``).
- ``"gold_credit"``: on a labelled instance, how much likelier its gold label is under the chosen mixture than
  under equal weights (:func:`gold_credit`; ``info["gold_credit"]`` after every step). It measures the teachers'
  correctness on that row, not the student's progress.
"""

from __future__ import annotations

import numpy as np

#: the reward tiers, from the true objective to a proxy
TIERS = ("return", "student_credit", "gold_credit")
#: the tiers computed per instance (the others are one number per student)
INSTANCE_TIERS = ("student_credit", "gold_credit")


def gold_credit(teacher_ce: np.ndarray, labelled: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., B) float32 gold credit of the weights on each instance: on a labelled instance
    ``log(sum_k w_k p_k(y) / sum_k w_k) - log(mean_k p_k(y))`` with ``p_k(y) = exp(-teacher_ce_k)`` (nats; > 0 when
    the mixture chosen gives the gold label more probability than equal weights; all-zero weights count as equal
    weights: 0); 0 on the transfer rows, whose label is hidden.

    :param teacher_ce: (..., B, K) each teacher's CE on the gold label (the ``teacher_ce`` feature, T = 1).
    :param labelled: (..., B) bool or 0/1, whether the instance keeps its gold label.
    :param weights: (..., B, K) the weights as the env took them (clipped to [0, 1], or 0/1 selections).
    """
    known = np.asarray(labelled) > 0.5
    credit = np.zeros(known.shape, dtype=np.float32)
    if known.any():  # most batches of the transfer-set regime have one labelled row or none
        credit[known] = _credit(np.exp(-teacher_ce[known].astype(np.float64)), np.asarray(weights)[known])
    return credit


def gold_credit_of_rows(gold_likelihood: np.ndarray, labelled: np.ndarray, rows: np.ndarray,
                        weights: np.ndarray) -> np.ndarray:
    """:func:`gold_credit` of the split rows ``rows`` ((..., B) indices), from each row's ``p_k(y)`` computed once
    (:attr:`kd_gym.features.RowFeatures.gold_likelihood`, (N, K) float64) and its ``labelled`` flag ((N,) bool):
    the same numbers, with the work of a step left to the labelled rows of its batch.

    :param weights: (..., B, K) the weights as the env took them.
    """
    known = labelled[rows]
    credit = np.zeros(known.shape, dtype=np.float32)
    if np.count_nonzero(known):  # (a C call: the cheapest test of a step's few labelled rows)
        credit[known] = _credit(gold_likelihood[rows[known]], np.asarray(weights)[known])
    return credit


def _credit(p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(M,) the gold credit of (M, K) weights on M labelled instances whose teachers give their gold label the
    float64 probabilities ``p`` (M, K)."""
    w = weights.astype(np.float64)
    total = w.sum(-1)
    mean = p.mean(-1)
    mixture = np.where(total > 0, (w * p).sum(-1) / np.maximum(total, 1e-12), mean)
    return np.log(np.maximum(mixture, 1e-30)) - np.log(np.maximum(mean, 1e-30))
