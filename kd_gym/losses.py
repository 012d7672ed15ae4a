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
    :param instance_ce: (B,) each instance's CE against its gold label, whatever its coefficient (detached).
    :param instance_kd: (B,) each instance's T^2-scaled KL to its mixture, 0 where its weights are all zero
        (detached).
    :param weights: (B, K) the weights as the mixture used them: each row normalised to sum 1, all-zero rows zero
        (detached).
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    per_instance: torch.Tensor
    instance_ce: torch.Tensor | None = None
    instance_kd: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def teacher_mixture(teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float,
                    teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    """The weighted mixture of the teachers' softened distributions.

    :param teacher_logits: (B, K, C) raw teacher logits.
    :param weights: (B, K) non-negative weights; each row is normalised to sum 1 (all-zero rows give zeros).
    :param temperature: softening temperature T > 0.
    :param teacher_probs: (B, K, C) ``softmax(teacher_logits / T)`` when already known (then not recomputed).
    :return: (B, C) mixture probabilities; rows whose weights are all zero are all zero.
    """
    return _mix(normalised_weights(weights), teacher_logits, temperature, teacher_probs)


def normalised_weights(weights: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) ``weights`` with each row divided by its sum (``total``, (B, 1), when already known); all-zero rows
    stay zero."""
    total = weights.sum(dim=1, keepdim=True) if total is None else total
    return weights / total.clamp_min(1e-12)


def _mix(normalised: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
         teacher_probs: torch.Tensor | None) -> torch.Tensor:
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1) if teacher_probs is None else teacher_probs
    return torch.bmm(normalised.unsqueeze(1), probs).squeeze(1)


def multi_teacher_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    labelled: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
) -> KDLoss:
    """Weighted multi-teacher KD loss (see the module docstring for the formula).

    :param student_logits: (B, C) student logits.
    :param teacher_logits: (B, K, C) teacher logits.
    :param weights: (B, K) per-instance teacher weights, >= 0.
    :param labels: (B,) gold labels.
    :param alpha: weight of the gold-label CE term, in [0, 1].
    :param temperature: softening temperature T > 0.
    :param labelled: (B,) bool, which instances have a gold label (None: all); ``labels`` of the others are ignored.
    :param teacher_probs: (B, K, C) ``softmax(teacher_logits / T)`` when already known (the env gathers it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits = student_logits.float()
    with torch.no_grad():  # what does not depend on the student: the mixture and each row's coefficients
        # Only the student learns from this loss: a differentiable policy's weights or a live teacher get no gradient.
        weights = weights if weights.dtype == torch.float32 else weights.float()
        total = weights.sum(dim=1, keepdim=True)
        normalised = normalised_weights(weights, total)
        mixture = _mix(normalised, teacher_logits, temperature, teacher_probs)
        mixture_neg_entropy = torch.xlogy(mixture, mixture).sum(dim=-1)  # 0 * log 0 = 0
        has_teacher = total.view(-1) > 0
        # per instance: ce_coef * CE + kd_coef * KD; labelled: alpha, 1 - alpha (CE alone without a teacher);
        # transfer: 0, 1 (nothing without a teacher)
        if labelled is None:
            known = torch.ones_like(mixture_neg_entropy)
            kd_coef = has_teacher * (1.0 - alpha)
        else:
            known = labelled.float()
            kd_coef = torch.where(labelled, 1.0 - alpha, 1.0) * has_teacher
        ce_coef = torch.where(has_teacher, alpha, 1.0) * known
        has_teacher = has_teacher.float()
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    # KL(p || q) = sum p log p - sum p log q
    cross = torch.bmm(mixture.unsqueeze(1), F.log_softmax(student_logits / temperature, dim=-1).unsqueeze(2))
    kd = temperature**2 * (mixture_neg_entropy - cross.view(-1))
    per_instance = ce_coef * ce + kd_coef * kd
    ce_mean = torch.dot(ce, known) / known.sum().clamp_min(1)  # differentiable: a probe may take its gradient
    kd_mean = torch.dot(kd, has_teacher) / has_teacher.sum().clamp_min(1)
    return KDLoss(loss=per_instance.mean(), ce=ce_mean, kd=kd_mean, per_instance=per_instance,
                  instance_ce=ce.detach(), instance_kd=kd.detach(), weights=normalised)
