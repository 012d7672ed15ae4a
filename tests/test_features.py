"""The observation's features: the per-step path (rows computed once, then gathered) gives what the reference
computation gives, and the reference's values are the documented ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_gym.credit import gold_credit, gold_credit_of_rows
from kd_gym.features import assemble_features, observation_features, row_features, student_columns


def _inputs(n: int = 64, k: int = 4, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, k, c, generator=g) * 3
    student = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(0, c, (n,), generator=g)
    lengths = torch.randint(1, 40, (n,), generator=g)
    labelled = torch.rand(n, generator=g) < 0.3
    return teacher, student, labels, lengths, labelled


@pytest.mark.parametrize("labelled_rows", [True, False])
def test_gathered_rows_give_the_reference_features(labelled_rows):
    teacher, student, labels, lengths, labelled = _inputs()
    labelled = labelled if labelled_rows else None
    embedding = torch.randn(len(teacher), 7) * 30  # some values beyond the bound: clipped once, with the rows
    rows = row_features(teacher, labels, lengths, 2.0, labelled, embedding)
    batch = np.array([5, 0, 63, 17, 17, 30])
    representation = torch.randn(6, 5) * 30
    index = torch.as_tensor(batch)
    columns = student_columns(student[index], rows.teacher_probs[index], 2.0).numpy()
    *fast, logits = assemble_features(rows, batch, columns, representation.numpy())
    reference = observation_features(teacher[index], student[index], labels[index], lengths[index], 2.0,
                                     representation, None if labelled is None else labelled[index], embedding[index])
    for got, expected in zip(fast, reference):
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(columns[:, -3:], student[index].numpy())  # the student's logits ride along
    np.testing.assert_array_equal(logits, teacher[index].clamp(-50, 50).numpy())


def test_reference_features_by_hand_on_one_instance():
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])  # (1, K=2, C=3)
    student = torch.tensor([[0.0, 1.0, 0.0]])
    per_teacher, per_instance = observation_features(teacher, student, torch.tensor([0]), torch.tensor([32]), 1.0)
    p0 = torch.softmax(teacher[0, 0], -1)
    q = torch.softmax(student[0], -1)
    assert per_teacher[0, 0, 0].item() == pytest.approx(-math.log(p0[0].item()), abs=1e-6)  # teacher_ce
    assert per_teacher[0, :, 2].tolist() == [1.0, 0.0]  # teacher_correct: teacher 0 predicts the gold label 0
    assert per_teacher[0, 0, 3].item() == pytest.approx((p0 * (p0.log() - q.log())).sum().item(), abs=1e-6)
    assert per_instance[0, 0].item() == 0.0  # the two teachers disagree
    assert per_instance[0, 1].item() == pytest.approx(-math.log(q[0].item()), abs=1e-6)  # student_ce
    assert per_instance[0, 3].item() == 0.5 and per_instance[0, 4].item() == 1.0  # length / 64, labelled


def test_gold_credit_of_precomputed_rows_equals_the_direct_computation():
    teacher, _, labels, lengths, labelled = _inputs(n=64, k=4)
    rows = row_features(teacher, labels, lengths, 2.0, labelled)
    rng = np.random.default_rng(0)
    batch = rng.choice(64, size=(3, 16))  # (N, B): a vector env's rows
    weights = rng.random((3, 16, 4)).astype(np.float32)
    weights[0, :4] = 0.0  # all-zero rows count as equal weights
    teacher, _, _, instance = rows.blocks(rows.packed)
    expected = gold_credit(teacher[batch, :, 0], instance[batch, 4], weights)
    got = gold_credit_of_rows(rows.gold_likelihood, rows.labelled, batch, weights)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32 and np.count_nonzero(got) > 0
    assert (got[~labelled.numpy()[batch]] == 0).all()  # hidden labels earn nothing
    unlabelled = np.flatnonzero(~labelled.numpy())[:16]
    assert not gold_credit_of_rows(rows.gold_likelihood, rows.labelled, unlabelled, weights[0]).any()
