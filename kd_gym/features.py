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
    batch's rows instead of recomputing them): host arrays for the observation and the gold credit, and the teachers'
    softened distributions on the device for the loss and the KL column.

    The host columns of a row lie side by side in one array, ``packed``, so that a step gathers its rows with one
    indexing operation; :meth:`blocks` cuts a gathered block into its parts (views, no copy):

    - ``teacher`` (N, K, P): ``teacher_features`` without the student: ``teacher_ce``, ``teacher_entropy``,
      ``teacher_correct`` (masked on hidden labels) and, in the KL column, ``sum p log p`` of each teacher at T (the
      half of the KL that does not depend on the student);
    - ``teacher_logits`` (N, K, C), clipped to +-FEATURE_BOUND;
    - ``gold`` (N, C): -1 at the gold label of a labelled row, 0 elsewhere: ``(log_q * gold).sum(1)`` is the
      student's masked CE;
    - ``instance`` (N, 5 [+ E]): ``instance_features`` without the student: its columns ``student_ce`` and
      ``student_entropy`` are 0; the frozen sentence embedding follows, clipped, when the observation shows it.

    :param packed: (N, K * P + K * C + C + S) float32, the blocks above in that order.
    :param sizes: (K, P, C).
    :param teacher_probs: (N, K, C) the teachers' distributions at T, on the device of the logits.
    :param gold_likelihood: (N, K) float64 ``p_k(y) = exp(-teacher_ce)``, each teacher's probability of the gold
        label (1 where it is hidden: never read there), for :func:`kd_gym.credit.gold_credit_of_rows`.
    :param labelled: (N,) bool, whether the row keeps its gold label.
    """

    packed: np.ndarray
    sizes: tuple[int, int, int]
    teacher_probs: torch.Tensor
    gold_likelihood: np.ndarray
    labelled: np.ndarray

    def blocks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``teacher`` (M, K, P), ``teacher_logits`` (M, K, C), ``gold`` (M, C) and ``instance`` (M, S): views of
        ``rows``, M rows gathered from (or sliced off) ``packed``."""
        k, p, c = self.sizes
        m, first, second = len(rows), k * p, k * p + k * c
        return (rows[:, :first].reshape(m, k, p), rows[:, first:second].reshape(m, k, c),
                rows[:, second : second + c], rows[:, second + c :])


def row_features(teacher_logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, temperature: float,
                 labelled: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> RowFeatures:
    """The :class:`RowFeatures` of a split's N rows (the same values :func:`observation_features` computes).

    :param teacher_logits: (N, K, C); :param labels: (N,); :param lengths: (N,); :param labelled: (N,) bool or None;
    :param embedding: (N, E) the frozen sentence embeddings the observation shows, or None.
    """
    n, k, c = teacher_logits.shape
    dummy_student = torch.zeros(n, c, device=teacher_logits.device)
    per_teacher, per_instance = observation_features(teacher_logits, dummy_student, labels, lengths, temperature,
                                                     labelled=labelled, embedding=embedding)
    per_instance[:, 1:3] = 0.0  # the student's columns
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    teacher_probs = log_t.exp()
    teacher = torch.cat([per_teacher[..., :3], (teacher_probs * log_t).sum(-1, keepdim=True)], dim=-1)
    known = torch.ones(n, device=labels.device) if labelled is None else labelled.float()
    gold = -F.one_hot(labels, c).float() * known[:, None]
    blocks = [teacher, teacher_logits.float().clamp(-FEATURE_BOUND, FEATURE_BOUND), gold, per_instance]
    packed = torch.cat([block.reshape(n, -1).float() for block in blocks], dim=1).cpu().numpy()
    teacher_ce = packed[:, : k * teacher.shape[-1]].reshape(n, k, -1)[..., TEACHER_FEATURES.index("teacher_ce")]
    return RowFeatures(packed=packed, sizes=(k, teacher.shape[-1], c),
                       teacher_probs=teacher_probs.contiguous(),
                       gold_likelihood=np.exp(-teacher_ce.astype(np.float64)),
                       labelled=known.cpu().numpy() > 0.5)


def student_columns(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """What the observation needs from the student, in one (B, K + 2C) tensor (one host copy): per teacher
    ``sum_c p_kc log q_c`` at T (the KL's cross term), the student's log-probabilities at T = 1, and its logits.

    :param student_logits: (B, C); :param teacher_probs: (B, K, C) at T.
    """
    logits = student_logits.detach()
    cross = torch.bmm(teacher_probs, F.log_softmax(logits / temperature, -1).unsqueeze(-1)).squeeze(-1)  # (B, K)
    return torch.cat([cross, F.log_softmax(logits, -1), logits], dim=1)


def assemble_features(rows: RowFeatures, indices: np.ndarray, student: np.ndarray,
                      representation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``teacher_features`` (B, K, P), ``instance_features`` (B, S) and ``teacher_logits`` (B, K, C) on the host,
    as :func:`observation_features` gives them, from the rows ``indices`` of ``rows`` and the
    :func:`student_columns` of the batch. One gather of the rows, then few whole-array numpy operations: at B = 32
    their count, not their size, is the cost; only the columns that depend on the student are computed and clipped
    (the rows' are clipped once). The three arrays are views of one block gathered for this call.

    :param student: (B, K + 2C) host copy of :func:`student_columns`.
    :param representation: (B, H) host copy of the student's representation, placed after the 5 instance features
        (and before the rows' embedding), or None.
    """
    k, _, c = rows.sizes
    teacher, teacher_logits, gold, instance = rows.blocks(rows.packed[indices])  # one gather (a copy)
    kl = teacher[..., 3]
    kl -= student[:, :k]  # KL(p || q) = sum p log p - sum p log q
    np.clip(kl, -FEATURE_BOUND, FEATURE_BOUND, out=kl)  # the other columns are bounded already
    if representation is not None:
        base = len(INSTANCE_FEATURES)
        instance = np.concatenate([instance[:, :base], np.clip(representation, -FEATURE_BOUND, FEATURE_BOUND),
                                   instance[:, base:]], axis=1, dtype=np.float32)
    log_q = student[:, k : k + c]
    np.sum(log_q * gold, axis=1, out=instance[:, 1])  # student_ce, 0 where the label is hidden
    np.multiply((np.exp(log_q) * log_q).sum(1), -1.0 / math.log(max(c, 2)), out=instance[:, 2])  # student_entropy
    instance[:, 1] += 0.0  # -0.0 (a hidden label's CE) -> 0.0
    student_part = instance[:, 1:3]
    np.clip(student_part, -FEATURE_BOUND, FEATURE_BOUND, out=student_part)
    return teacher, instance, teacher_logits
