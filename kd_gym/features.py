"""Per-instance features of the observation: what a teacher selector knows about each training instance.

Following RL-KD (Yuan et al., 2021), the state of an instance holds each teacher's prediction and loss and the
student's prediction; we add entropies, agreement and length. All features are computed on the device from the
cached teacher logits and the student's logits, in one pass, and clipped to ``[-FEATURE_BOUND, FEATURE_BOUND]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_BOUND = 50.0
LENGTH_SCALE = 64.0


TEACHER_FEATURES = ("teacher_ce", "teacher_entropy", "teacher_correct", "teacher_student_kl")
INSTANCE_FEATURES = ("teacher_agreement", "student_ce", "student_entropy", "length", "labelled")
GOLD_TEACHER_FEATURES = ("teacher_ce", "teacher_correct")  # use the gold label: 0 where it is hidden
GOLD_INSTANCE_FEATURES = ("student_ce",)


def instance_feature_names(representation_size: int = 0, embedding_size: int = 0) -> list[str]:
    """Names of the S columns of ``instance_features``, in order."""
    return [*INSTANCE_FEATURES, *(f"student_repr[{i}]" for i in range(representation_size)),
            *(f"embedding[{i}]" for i in range(embedding_size))]


def observation_features(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float,
    representation: torch.Tensor | None = None,
    labelled: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``teacher_features`` (B, K, P) and ``instance_features`` (B, S), columns as :data:`TEACHER_FEATURES` and
    :func:`instance_feature_names`.

    Per (instance, teacher k), ``teacher_features[:, k]``:

    - ``teacher_ce``: CE of teacher k against the gold label (nats, T = 1).
    - ``teacher_entropy``: entropy of teacher k's distribution softened at T, divided by log C (0..1).
    - ``teacher_correct``: 1 if teacher k's top label is the gold label, else 0.
    - ``teacher_student_kl``: KL(teacher_k at T || student at T), nats: how much k would still teach.

    Per instance, ``instance_features``:

    - ``teacher_agreement``: share of teacher pairs that predict the same label (1 when K = 1).
    - ``student_ce``: CE of the student against the gold label (nats); ``student_entropy``: entropy of the
      student's distribution at T = 1, divided by log C.
    - ``length``: tokens (full) or words (lite) / 64.
    - ``labelled``: 1 if the instance's gold label is available for training, 0 on the transfer set. Where it is
      0, the features that use the gold label (``teacher_ce``, ``teacher_correct``, ``student_ce``) are 0: an agent
      never sees a hidden label.
    - ``student_repr[i]`` (optional): the student's pooled representation.
    - ``embedding[i]`` (optional, lite student): the instance's frozen sentence embedding.

    :param teacher_logits: (B, K, C); :param student_logits: (B, C); :param labels: (B,); :param lengths: (B,);
    :param labelled: (B,) bool (None: all labelled); :param embedding: (B, D) or None.
    """
    batch, k, c = teacher_logits.shape
    teacher_logits = teacher_logits.float()
    student_logits = student_logits.detach().float()
    log_c = torch.log(torch.tensor(float(max(c, 2)), device=teacher_logits.device))
    gold = labels.view(batch, 1, 1).expand(batch, k, 1)
    teacher_ce = -F.log_softmax(teacher_logits, -1).gather(-1, gold).squeeze(-1)
    teacher_log_t = F.log_softmax(teacher_logits / temperature, -1)
    teacher_entropy = -(teacher_log_t.exp() * teacher_log_t).sum(-1) / log_c
    predictions = teacher_logits.argmax(-1)
    teacher_correct = (predictions == labels.view(batch, 1)).float()
    student_log_t = F.log_softmax(student_logits / temperature, -1)
    kl = (teacher_log_t.exp() * (teacher_log_t - student_log_t.unsqueeze(1))).sum(-1)
    if k > 1:
        same = (predictions.unsqueeze(2) == predictions.unsqueeze(1)).float()
        agreement = (same.sum((1, 2)) - k) / (k * (k - 1))
    else:
        agreement = torch.ones(batch, device=teacher_logits.device)
    student_ce = F.cross_entropy(student_logits, labels, reduction="none")
    student_log = F.log_softmax(student_logits, -1)
    student_entropy = -(student_log.exp() * student_log).sum(-1) / log_c
    known = torch.ones(batch, device=teacher_logits.device) if labelled is None else labelled.float()
    teacher_ce, teacher_correct, student_ce = teacher_ce * known[:, None], teacher_correct * known[:, None], student_ce * known
    per_teacher = torch.stack([teacher_ce, teacher_entropy, teacher_correct, kl], dim=-1)  # (B, K, P)
    columns = [torch.stack([agreement, student_ce, student_entropy, lengths.float() / LENGTH_SCALE, known], dim=1)]
    if representation is not None:
        columns.append(representation.detach().float())
    if embedding is not None:
        columns.append(embedding.float())
    per_instance = torch.cat(columns, dim=1)  # (B, S)
    return per_teacher.clamp(-FEATURE_BOUND, FEATURE_BOUND), per_instance.clamp(-FEATURE_BOUND, FEATURE_BOUND)


@dataclass
class RowFeatures:
    """The student-independent part of every row's observation, computed once per split (a step gathers its
    batch's rows instead of recomputing them): host arrays for the observation, and the teachers' softened
    distributions on the device for the loss and the KL column.

    :param teacher: (N, K, P) ``teacher_features`` without the student: ``teacher_ce``, ``teacher_entropy``,
        ``teacher_correct`` (masked on hidden labels) and, in the KL column, ``sum p log p`` of each teacher at T
        (the half of the KL that does not depend on the student).
    :param instance: (N, 5) ``instance_features`` without the student: its columns ``student_ce`` and
        ``student_entropy`` are 0.
    :param gold: (N, C) -1 at the gold label of a labelled row, 0 elsewhere: ``(log_q * gold).sum(1)`` is the
        student's masked CE.
    :param teacher_logits: (N, K, C) clipped to +-FEATURE_BOUND.
    :param teacher_probs: (N, K, C) the teachers' distributions at T, on the device of the logits.
    """

    teacher: np.ndarray
    instance: np.ndarray
    gold: np.ndarray
    teacher_logits: np.ndarray
    teacher_probs: torch.Tensor


def row_features(teacher_logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, temperature: float,
                 labelled: torch.Tensor | None = None) -> RowFeatures:
    """The :class:`RowFeatures` of a split's N rows (the same values :func:`observation_features` computes).

    :param teacher_logits: (N, K, C); :param labels: (N,); :param lengths: (N,); :param labelled: (N,) bool or None.
    """
    n, k, c = teacher_logits.shape
    dummy_student = torch.zeros(n, c, device=teacher_logits.device)
    per_teacher, per_instance = observation_features(teacher_logits, dummy_student, labels, lengths, temperature,
                                                     labelled=labelled)
    per_instance[:, 1:3] = 0.0  # the student's columns
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    teacher_probs = log_t.exp()
    teacher = torch.cat([per_teacher[..., :3], (teacher_probs * log_t).sum(-1, keepdim=True)], dim=-1)
    known = torch.ones(n, device=labels.device) if labelled is None else labelled.float()
    gold = -F.one_hot(labels, c).float() * known[:, None]
    host = (lambda t: np.ascontiguousarray(t.float().cpu().numpy()))  # noqa: E731
    return RowFeatures(teacher=host(teacher), instance=host(per_instance[:, : len(INSTANCE_FEATURES)]), gold=host(gold),
                       teacher_logits=host(teacher_logits.clamp(-FEATURE_BOUND, FEATURE_BOUND)),
                       teacher_probs=teacher_probs.contiguous())


def student_columns(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """What the observation needs from the student, in one (B, K + 2C) tensor (one host copy): per teacher
    ``sum_c p_kc log q_c`` at T (the KL's cross term), the student's log-probabilities at T = 1, and its logits.

    :param student_logits: (B, C); :param teacher_probs: (B, K, C) at T.
    """
    logits = student_logits.detach()
    cross = torch.bmm(teacher_probs, F.log_softmax(logits / temperature, -1).unsqueeze(-1)).squeeze(-1)  # (B, K)
    return torch.cat([cross, F.log_softmax(logits, -1), logits], dim=1)


def assemble_features(rows: RowFeatures, indices: np.ndarray, student: np.ndarray,
                      extra: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``teacher_features`` (B, K, P) and ``instance_features`` (B, S) on the host, as :func:`observation_features`
    gives them, from the rows ``indices`` of ``rows`` and the :func:`student_columns` of the batch. Few, whole-array
    numpy operations: at B = 32 their count, not their size, is the cost.

    :param student: (B, K + 2C) host copy of :func:`student_columns`.
    :param extra: host (B, ·) arrays appended to ``instance_features`` (the student's representation, the
        embedding), in that order.
    """
    k, c = rows.teacher.shape[1], rows.gold.shape[1]
    teacher = rows.teacher[indices]  # a copy: fancy indexing
    kl = teacher[..., 3]
    kl -= student[:, :k]  # KL(p || q) = sum p log p - sum p log q
    np.clip(kl, -FEATURE_BOUND, FEATURE_BOUND, out=kl)  # the other columns are bounded already
    if extra:
        instance = np.empty((len(indices), len(INSTANCE_FEATURES) + sum(e.shape[1] for e in extra)), dtype=np.float32)
        instance[:, : len(INSTANCE_FEATURES)] = rows.instance[indices]
        instance[:, len(INSTANCE_FEATURES) :] = np.concatenate(extra, axis=1) if len(extra) > 1 else extra[0]
    else:
        instance = rows.instance[indices]  # a copy, its student columns 0
    log_q = student[:, k : k + c]
    np.sum(log_q * rows.gold[indices], axis=1, out=instance[:, 1])  # student_ce, 0 where the label is hidden
    instance[:, 1] += 0.0  # -0.0 (a hidden label) -> 0.0
    np.multiply((np.exp(log_q) * log_q).sum(1), -1.0 / math.log(max(c, 2)), out=instance[:, 2])  # student_entropy
    np.clip(instance, -FEATURE_BOUND, FEATURE_BOUND, out=instance)
    return teacher, instance
