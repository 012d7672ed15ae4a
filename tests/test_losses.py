"""Tests for kd_gym.losses: the weighted multi-teacher KD loss against hand-computed KD, CE and KL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_gym.losses import multi_teacher_kd_loss, teacher_mixture

B, K, C = 6, 3, 4


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits (B, C), teacher logits (B, K, C) and labels (B,), drawn with spread-out values."""
    generator = torch.Generator().manual_seed(0)
    student = 2.0 * torch.randn(B, C, generator=generator)
    teachers = 3.0 * torch.randn(B, K, C, generator=generator)
    labels = torch.randint(0, C, (B,), generator=generator)
    return student, teachers, labels


def kl_by_hand(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,) KL(target || softmax(student / T)) from the explicit formula sum p (log p - log q)."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return (target_probs * (target_probs.log() - log_q)).sum(-1)


def single_teacher_kd(student, teacher, labels, alpha, temperature) -> torch.Tensor:
    """(B,) Hinton KD with one teacher, via torch's kl_div: alpha CE + (1 - alpha) T^2 KL(p_T || q_T)."""
    kl = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                  reduction="none").sum(-1)
    return alpha * F.cross_entropy(student, labels, reduction="none") + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("k", range(K))
def test_one_hot_weights_equal_single_teacher_kd(batch, k: int) -> None:
    student, teachers, labels = batch
    weights = F.one_hot(torch.full((B,), k), K).float()
    result = multi_teacher_kd_loss(student, teachers, weights, labels, alpha=0.3, temperature=2.5)
    expected = single_teacher_kd(student, teachers[:, k], labels, alpha=0.3, temperature=2.5)
    torch.testing.assert_close(result.per_instance, expected)
    torch.testing.assert_close(result.loss, expected.mean())
    torch.testing.assert_close(result.ce, F.cross_entropy(student, labels))
    kl = kl_by_hand(F.softmax(teachers[:, k] / 2.5, -1), student, 2.5)
    torch.testing.assert_close(result.kd, (2.5**2 * kl).mean())


def test_equal_weights_distil_from_the_averaged_teacher_distribution(batch) -> None:
    student, teachers, labels = batch
    result = multi_teacher_kd_loss(student, teachers, torch.ones(B, K), labels, alpha=0.5, temperature=2.0)
    averaged = F.softmax(teachers / 2.0, -1).mean(1)  # (B, C): mean of the softened distributions
    expected = 0.5 * F.cross_entropy(student, labels, reduction="none") + 0.5 * 4.0 * kl_by_hand(averaged, student, 2.0)
    torch.testing.assert_close(result.per_instance, expected)
    # The mixture is of distributions, not the softmax of averaged logits: the two differ on this data.
    logit_average = F.softmax(teachers.mean(1) / 2.0, -1)
    wrong = 0.5 * F.cross_entropy(student, labels, reduction="none") + 2.0 * kl_by_hand(logit_average, student, 2.0)
    assert (result.per_instance - wrong).abs().max() > 1e-3


def test_weighted_mixture_by_hand(batch) -> None:
    student, teachers, labels = batch
    weights = torch.tensor([[0.2, 0.3, 0.5]]).repeat(B, 1)
    mixture = teacher_mixture(teachers, weights, 1.5)
    probs = F.softmax(teachers / 1.5, -1)
    torch.testing.assert_close(mixture, 0.2 * probs[:, 0] + 0.3 * probs[:, 1] + 0.5 * probs[:, 2])
    torch.testing.assert_close(mixture.sum(-1), torch.ones(B))


def test_all_zero_row_is_plain_cross_entropy(batch) -> None:
    student, teachers, labels = batch
    weights = torch.rand(B, K, generator=torch.Generator().manual_seed(1)) + 0.1
    weights[[1, 4]] = 0.0
    result = multi_teacher_kd_loss(student, teachers, weights, labels, alpha=0.2, temperature=3.0)
    ce = F.cross_entropy(student, labels, reduction="none")
    torch.testing.assert_close(result.per_instance[[1, 4]], ce[[1, 4]])
    # The other rows are KD rows, far from plain CE at alpha = 0.2.
    assert (result.per_instance[[0, 2, 3, 5]] - ce[[0, 2, 3, 5]]).abs().min() > 1e-3
    # kd is averaged over the rows that have a teacher only.
    rows = [0, 2, 3, 5]
    mixture = teacher_mixture(teachers, weights, 3.0)[rows]
    torch.testing.assert_close(result.kd, (9.0 * kl_by_hand(mixture, student[rows], 3.0)).mean())


def test_all_rows_zero_give_cross_entropy_and_zero_kd(batch) -> None:
    student, teachers, labels = batch
    result = multi_teacher_kd_loss(student, teachers, torch.zeros(B, K), labels, alpha=0.5, temperature=2.0)
    torch.testing.assert_close(result.per_instance, F.cross_entropy(student, labels, reduction="none"))
    torch.testing.assert_close(result.loss, F.cross_entropy(student, labels))
    assert result.kd.item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_term_is_t_squared_times_kl_at_t(batch, temperature: float) -> None:
    student, teachers, labels = batch
    weights = torch.tensor([[1.0, 2.0, 0.0]]).repeat(B, 1)
    result = multi_teacher_kd_loss(student, teachers, weights, labels, alpha=0.0, temperature=temperature)
    probs = F.softmax(teachers / temperature, -1)
    mixture = (probs[:, 0] + 2.0 * probs[:, 1]) / 3.0
    kl = kl_by_hand(mixture, student, temperature)
    torch.testing.assert_close(result.per_instance, temperature**2 * kl)  # alpha = 0: the KD term alone
    torch.testing.assert_close(result.kd, temperature**2 * kl.mean())


def test_weight_rows_are_normalised(batch) -> None:
    student, teachers, labels = batch
    weights = torch.rand(B, K, generator=torch.Generator().manual_seed(2))
    weights[2] = torch.tensor([0.0, 0.4, 0.0])
    base = multi_teacher_kd_loss(student, teachers, weights, labels)
    scaled = multi_teacher_kd_loss(student, teachers, 3.0 * weights, labels)
    torch.testing.assert_close(scaled.per_instance, base.per_instance)
    # A row with a single non-zero weight, whatever its size, is that teacher alone.
    alone = single_teacher_kd(student, teachers[:, 1], labels, alpha=0.5, temperature=2.0)
    torch.testing.assert_close(base.per_instance[2], alone[2])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_invalid_alpha_raises(batch, alpha: float) -> None:
    student, teachers, labels = batch
    with pytest.raises(ValueError, match="alpha"):
        multi_teacher_kd_loss(student, teachers, torch.ones(B, K), labels, alpha=alpha)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_invalid_temperature_raises(batch, temperature: float) -> None:
    student, teachers, labels = batch
    with pytest.raises(ValueError, match="temperature"):
        multi_teacher_kd_loss(student, teachers, torch.ones(B, K), labels, temperature=temperature)


def test_alpha_one_is_cross_entropy_whatever_the_weights(batch) -> None:
    student, teachers, labels = batch
    result = multi_teacher_kd_loss(student, teachers, torch.rand(B, K), labels, alpha=1.0)
    torch.testing.assert_close(result.per_instance, F.cross_entropy(student, labels, reduction="none"))


def test_gradients_flow_to_student_logits_only(batch) -> None:
    student, teachers, labels = batch
    student = student.clone().requires_grad_(True)
    teachers = teachers.clone().requires_grad_(True)
    weights = torch.rand(B, K, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    result = multi_teacher_kd_loss(student, teachers, weights, labels, alpha=0.5, temperature=2.0)
    result.loss.backward()
    assert teachers.grad is None and weights.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # The gradient matches the closed form d/ds [alpha CE + (1 - alpha) T^2 KL] = alpha (p - y) + (1 - alpha) T (q_T - m).
    with torch.no_grad():
        mixture = teacher_mixture(teachers, weights, 2.0)
        p, q_t = F.softmax(student, -1), F.softmax(student / 2.0, -1)
        expected = (0.5 * (p - F.one_hot(labels, C)) + 0.5 * 2.0 * (q_t - mixture)) / B
    torch.testing.assert_close(student.grad, expected)


def reference_loss(student, teachers, weights, labels, alpha, temperature, labelled):
    """(B,) the loss from textbook ops (cross-entropy, KL written out) in float64, for the gradient to match."""
    probs = F.softmax(teachers / temperature, -1)
    total = weights.sum(1, keepdim=True)
    mixture = (weights / total.clamp_min(1e-12)).unsqueeze(1).bmm(probs).squeeze(1)
    has_teacher = (total.squeeze(1) > 0).float()
    kl = (torch.xlogy(mixture, mixture) - mixture * F.log_softmax(student / temperature, -1)).sum(-1)
    ce = F.cross_entropy(student, labels, reduction="none")
    known = labelled.float()
    ce_coef = torch.where(has_teacher > 0, alpha, 1.0) * known
    kd_coef = torch.where(labelled, 1.0 - alpha, 1.0) * has_teacher
    return ce_coef * ce + kd_coef * temperature**2 * kl


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 2.0), (0.2, 0.7), (0.0, 4.0), (1.0, 1.0)])
def test_gradient_matches_a_textbook_reference_with_hidden_labels_and_zero_rows(batch, alpha: float, temperature: float) -> None:
    student, teachers, labels = batch
    generator = torch.Generator().manual_seed(4)
    weights = torch.rand(B, K, generator=generator)
    weights[1] = 0.0  # gold label alone (or nothing, on a transfer row)
    weights[3] = torch.tensor([0.0, 0.0, 2.0])
    labelled = torch.tensor([True, False, True, False, True, True])
    upstream = torch.randn(B, generator=generator)  # any weighting of the rows, not just the mean
    loss_input = student.clone().requires_grad_(True)
    result = multi_teacher_kd_loss(loss_input, teachers, weights, labels, alpha, temperature, labelled)
    (result.per_instance * upstream).sum().backward()
    reference_input = student.clone().double().requires_grad_(True)
    reference = reference_loss(reference_input, teachers.double(), weights.double(), labels, alpha, temperature,
                               labelled)
    (reference * upstream.double()).sum().backward()
    torch.testing.assert_close(result.per_instance, reference.float())
    torch.testing.assert_close(loss_input.grad, reference_input.grad.float())
    # the per-instance parts: CE whatever its coefficient, KD zero where the row has no teacher
    torch.testing.assert_close(result.instance_ce, F.cross_entropy(student, labels, reduction="none"))
    assert result.instance_kd[1].item() == 0.0 and result.instance_kd[0].item() > 0.0

