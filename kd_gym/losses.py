"""The weighted multi-teacher distillation loss.

For one instance with gold label y, student logits s (C,), teacher logits t_k (C,) and weights w (K,):

    mix_T  = sum_k w_k softmax(t_k / T) / sum_k w_k
    loss   = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(mix_T || softmax(s / T))

An instance whose weights are all zero learns from the gold label alone: its loss is CE(s, y). An instance without
a gold label (the transfer set) learns from the teachers alone: its loss is T^2 * KL(mix_T || softmax(s / T)), and
0 (it teaches nothing) when its weights are all zero.
The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class KDLoss:
    """The loss of one batch and its parts (all scalars, averaged over the batch).

    :param loss: the value that is back-propagated.
    :param ce: mean cross-entropy of the student against the gold labels (over the labelled instances).
    :param kd: mean T^2-scaled KL divergence to the teacher mixture, over instances with some teacher weight
        (0 when every row is all-zero).
    :param per_instance: (B,) the loss of each instance, before averaging.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    per_instance: torch.Tensor


def teacher_mixture(teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """The weighted mixture of the teachers' softened distributions.

    :param teacher_logits: (B, K, C) raw teacher logits.
    :param weights: (B, K) non-negative weights; each row is normalised to sum 1 (all-zero rows give zeros).
    :param temperature: softening temperature T > 0.
    :return: (B, C) mixture probabilities; rows whose weights are all zero are all zero.
    """
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    total = weights.sum(dim=1, keepdim=True)
    normalised = weights / total.clamp_min(1e-12)
    return (normalised.unsqueeze(-1) * probs).sum(dim=1)


def multi_teacher_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    labelled: torch.Tensor | None = None,
) -> KDLoss:
    """Weighted multi-teacher KD loss (see the module docstring for the formula).

    :param student_logits: (B, C) student logits.
    :param teacher_logits: (B, K, C) teacher logits.
    :param weights: (B, K) per-instance teacher weights, >= 0.
    :param labels: (B,) gold labels.
    :param alpha: weight of the gold-label CE term, in [0, 1].
    :param temperature: softening temperature T > 0.
    :param labelled: (B,) bool, which instances have a gold label (None: all); ``labels`` of the others are ignored.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits = student_logits.float()
    # Only the student learns from this loss: a differentiable policy's weights or a live teacher get no gradient.
    teacher_logits = teacher_logits.detach()
    weights = weights.detach().to(student_logits.dtype)
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    mixture = teacher_mixture(teacher_logits, weights, temperature)
    log_student_t = F.log_softmax(student_logits / temperature, dim=-1)
    # KL(p || q) = sum p (log p - log q); xlogy makes 0 * log 0 = 0 for zero-probability classes.
    kl = (torch.xlogy(mixture, mixture) - mixture * log_student_t).sum(dim=-1)
    kd = temperature**2 * kl
    has_teacher = weights.sum(dim=1) > 0
    per_instance = torch.where(has_teacher, alpha * ce + (1.0 - alpha) * kd, ce)
    if labelled is not None:  # transfer rows: the teachers' mixture alone, nothing without a teacher
        per_instance = torch.where(labelled, per_instance, torch.where(has_teacher, kd, torch.zeros_like(kd)))
        ce_mean = (ce * labelled).sum() / labelled.sum().clamp_min(1)
    else:
        ce_mean = ce.mean()
    n_kd = has_teacher.sum()
    kd_mean = (kd * has_teacher).sum() / n_kd.clamp_min(1)
    return KDLoss(loss=per_instance.mean(), ce=ce_mean, kd=kd_mean, per_instance=per_instance)
