"""Per-instance features of the observation: what a teacher selector knows about each training instance.

Following RL-KD (Yuan et al., 2021), the state of an instance holds each teacher's prediction and loss and the
student's prediction; we add entropies, agreement and length. All features are computed on the device from the
cached teacher logits and the student's logits, in one pass, and clipped to ``[-FEATURE_BOUND, FEATURE_BOUND]``.
"""

from __future__ import annotations

import math

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


def row_features(teacher_logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, temperature: float,
                 labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the observation (and the loss) needs that does not depend on the student, for every row of a split,
    computed once: an env step gathers its batch's rows instead of recomputing them.

    :param teacher_logits: (N, K, C); :param labels: (N,); :param lengths: (N,); :param labelled: (N,) bool or None.
    :return: ``teacher_rows`` (N, K, 4): ``teacher_ce``, ``teacher_entropy``, ``teacher_correct`` (as in
        :func:`observation_features`, masked on hidden labels) and the teacher's ``sum p log p`` at T (nats);
        ``teacher_probs`` (N, K, C): the teachers' distributions at T; ``instance_rows`` (N, 3):
        ``teacher_agreement``, ``length``, ``labelled``.
    """
    n, k, c = teacher_logits.shape
    dummy_student = torch.zeros(n, c, device=teacher_logits.device)
    per_teacher, per_instance = observation_features(teacher_logits, dummy_student, labels, lengths, temperature,
                                                     labelled=labelled)
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    teacher_probs = log_t.exp()
    neg_entropy = (teacher_probs * log_t).sum(-1, keepdim=True)
    teacher_rows = torch.cat([per_teacher[..., :3], neg_entropy], dim=-1)
    return teacher_rows.contiguous(), teacher_probs.contiguous(), per_instance[:, [0, 3, 4]].contiguous()


def step_features(teacher_rows: torch.Tensor, teacher_probs: torch.Tensor, instance_rows: torch.Tensor,
                  student_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                  representation: torch.Tensor | None = None,
                  embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`observation_features` of a batch from its rows of :func:`row_features` and the student's logits: the
    same values (up to float rounding) with the student-independent part read, not recomputed.

    :param teacher_rows: (B, K, 4); :param teacher_probs: (B, K, C); :param instance_rows: (B, 3);
    :param student_logits: (B, C); :param labels: (B,).
    """
    c = student_logits.shape[-1]
    student_logits = student_logits.detach().float()
    known = instance_rows[:, 2]
    student_log_t = F.log_softmax(student_logits / temperature, -1)
    # KL(p_k || q) = sum p_k log p_k - sum p_k log q, the first term read from the rows
    kl = teacher_rows[..., 3] - torch.bmm(teacher_probs, student_log_t.unsqueeze(-1)).squeeze(-1)  # (B, K)
    per_teacher = torch.cat([teacher_rows[..., :3], kl.unsqueeze(-1)], dim=-1)
    student_log = F.log_softmax(student_logits, -1)
    student_ce = -student_log.gather(-1, labels.view(-1, 1)).squeeze(-1) * known
    student_entropy = -(student_log.exp() * student_log).sum(-1) / math.log(max(c, 2))
    columns = [torch.stack([instance_rows[:, 0], student_ce, student_entropy, instance_rows[:, 1], known], dim=1)]
    if representation is not None:
        columns.append(representation.detach().float())
    if embedding is not None:
        columns.append(embedding.float())
    per_instance = torch.cat(columns, dim=1) if len(columns) > 1 else columns[0]
    return per_teacher.clamp(-FEATURE_BOUND, FEATURE_BOUND), per_instance.clamp(-FEATURE_BOUND, FEATURE_BOUND)
