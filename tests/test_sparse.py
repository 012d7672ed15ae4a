"""The sparse n-gram student (kd_gym.sparse): a step reads and writes only the table rows its batch touched."""

from __future__ import annotations

import pytest
import torch

from kd_gym.data import KDData
from kd_gym.losses import multi_teacher_kd_loss
from kd_gym.sparse import bag_sum, row_gradients, sgd_lr
from kd_gym.student import NgramStudent, StudentTrainer

BUCKETS, DIM, C, K = 40, 6, 3, 2


def batch_of(seed: int, rows: int = 5, length: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 12, (rows, length), generator=g, dtype=torch.int32)  # rows 12..39 never touched
    ids[:, 4:] = 0  # padding
    return {"inputs": {"ngram_ids": ids}, "teacher_logits": torch.randn(rows, K, C, generator=g),
            "labels": torch.randint(0, C, (rows,), generator=g)}


def test_the_sparse_gradient_is_the_dense_one_on_the_rows_touched() -> None:
    table = torch.randn(BUCKETS, DIM, requires_grad=True)
    ids = batch_of(0)["inputs"]["ngram_ids"]
    upstream = torch.randn(len(ids), DIM)
    (bag_sum(ids, table) * upstream).sum().backward()
    sparse = table.grad
    assert sparse.is_sparse
    dense_table = table.detach().clone().requires_grad_()
    (torch.nn.functional.embedding(ids, dense_table, padding_idx=0).sum(1) * upstream).sum().backward()
    torch.testing.assert_close(sparse.to_dense(), dense_table.grad, atol=1e-6, rtol=0)
    touched = sorted(set(ids[ids != 0].tolist()))
    assert sparse._indices()[0].tolist() == touched  # the padding row (0) and the untouched rows carry nothing


def test_row_gradients_sum_each_rows_positions_in_order() -> None:
    rows = torch.tensor([[5, 2, 0], [5, 2, 7]])
    touched, summed = row_gradients(rows, rows != 0, torch.tensor([[1.0, 2.0], [10.0, 20.0]]), num_rows=8)
    assert touched.tolist() == [2, 5, 7]
    assert summed.tolist() == [[11.0, 22.0], [11.0, 22.0], [10.0, 20.0]]


@pytest.mark.parametrize("steps", [1, 5])
def test_a_sparse_step_leaves_untouched_rows_and_matches_adamw_on_the_rows_touched(steps) -> None:
    students = {}
    for sparse in (True, False):
        trainer = StudentTrainer(NgramStudent(BUCKETS, C, DIM, sparse=sparse), KDData(None, ["t0", "t1"]), lr=1e-2,
                                 device="cpu")
        trainer.reset(seed=3)
        start = trainer.model.embedding.weight.detach().clone()
        for _ in range(steps):  # the same batch: the same rows every step, so lazy and dense moments agree there
            trainer.train_step(batch_of(1), torch.rand(5, K, generator=torch.Generator().manual_seed(2)))
        students[sparse] = trainer.model.embedding.weight.detach(), start
    (sparse_table, start), (dense_table, _) = students[True], students[False]
    ids = batch_of(1)["inputs"]["ngram_ids"]
    touched = torch.unique(ids[ids != 0]).long()
    untouched = torch.ones(BUCKETS, dtype=torch.bool)
    untouched[touched] = False
    untouched[0] = False
    assert torch.equal(sparse_table[untouched], start[untouched])  # never read nor written
    decay = (1 - 1e-2 * 0.01) ** steps  # dense AdamW decays every row every step; its moments there stay zero
    torch.testing.assert_close(dense_table[untouched], start[untouched] * decay, atol=1e-7, rtol=0)
    torch.testing.assert_close(sparse_table[touched], dense_table[touched], atol=1e-6, rtol=0)
    assert not sparse_table[0].any()  # the padding row stays zero


def test_fasttext_sgd_moves_the_rows_touched_by_the_decaying_rate_times_their_dense_gradient() -> None:
    lr, total = 0.5, 4
    trainer = StudentTrainer(NgramStudent(BUCKETS, C, DIM, sgd_lr=lr, sgd_steps=total), KDData(None, ["t0", "t1"]),
                             lr=1e-2, device="cpu")
    assert trainer.model.sparse  # SGD on the table implies the sparse path
    trainer.reset(seed=3)
    ids = batch_of(1)["inputs"]["ngram_ids"]
    touched = torch.unique(ids[ids != 0]).long()
    untouched = torch.ones(BUCKETS, dtype=torch.bool)
    untouched[touched] = False
    start = trainer.model.embedding.weight.detach().clone()
    weights = torch.rand(5, K, generator=torch.Generator().manual_seed(2))
    for step in range(1, total + 3):  # past the decay's end the rate is held at lr / total
        before = trainer.model.embedding.weight.detach().clone()
        dense = NgramStudent(BUCKETS, C, DIM)  # the same student with a dense table: its gradient, by autograd
        dense.load_state_dict(trainer.model.state_dict())
        batch = batch_of(1)
        result = trainer.train_step(batch, weights)
        logits, _ = dense(**batch["inputs"])
        loss = multi_teacher_kd_loss(logits, batch["teacher_logits"], weights, batch["labels"], alpha=0.5,
                                     temperature=2.0).loss
        assert loss.item() == pytest.approx(result.loss.item(), abs=1e-6)
        loss.backward()
        expected = before - sgd_lr(lr, step, total) * dense.embedding.weight.grad
        after = trainer.model.embedding.weight.detach()
        torch.testing.assert_close(after[touched], expected[touched], atol=1e-6, rtol=0)
        assert torch.equal(after[untouched], start[untouched])  # never read nor written; the padding row stays zero
        assert "exp_avg" not in trainer.optimizer.state[trainer.model.embedding.weight]  # no moments for the table
    assert sgd_lr(lr, 1, total) == lr and sgd_lr(lr, total, total) == sgd_lr(lr, total + 5, total) == lr / total
    assert sgd_lr(lr, 50, None) == lr  # no total: constant


ROW_RULES = {"lazy-adamw": {"sparse": True}, "fasttext-sgd": {"sgd_lr": 0.5, "sgd_steps": 3}}


@pytest.mark.parametrize("rule", list(ROW_RULES))
def test_the_sparse_student_keeps_its_exact_resume_and_lookahead(rule) -> None:
    trainer = StudentTrainer(NgramStudent(BUCKETS, C, DIM, **ROW_RULES[rule]), KDData(None, ["t0", "t1"]), lr=1e-2,
                             device="cpu")
    trainer.reset(seed=0)
    weights = torch.full((5, K), 0.5)
    trainer.train_step(batch_of(0), weights)
    saved = trainer.state_dict()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(batch_of(1), weights)
    after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.load_state_dict(saved)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in before.items())
    trainer.train_step(batch_of(1), weights)  # the moments came back too: the same update again
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in after.items())


@pytest.mark.parametrize("rule", list(ROW_RULES))
def test_a_batch_of_padding_only_updates_the_classifier_and_touches_no_row(rule) -> None:
    from kd_gym.student_stack import StackedNgramStudents, stacked_kd_loss

    trainer = StudentTrainer(NgramStudent(BUCKETS, C, DIM, **ROW_RULES[rule]), KDData(None, ["t0", "t1"]), lr=1e-2,
                             device="cpu")
    trainer.reset(seed=0)
    table = trainer.model.embedding.weight.detach().clone()
    batch = batch_of(0)
    batch["inputs"]["ngram_ids"] = torch.zeros_like(batch["inputs"]["ngram_ids"])
    trainer.train_step(batch, torch.full((5, K), 0.5))
    assert torch.equal(trainer.model.embedding.weight, table) and trainer.steps == 1
    stack = StackedNgramStudents(NgramStudent(BUCKETS, C, DIM, **ROW_RULES[rule]), 2, lr=1e-2, weight_decay=0.01,
                                 grad_clip=1.0, device="cpu")
    stack.reset(0, 0)
    stack.reset(1, 1)
    ids = torch.zeros(2, 5, 6, dtype=torch.int32)
    logits, _ = stack.forward(ids, train=True)
    logits.requires_grad_()
    loss = stacked_kd_loss(logits, torch.randn(2, 5, K, C), torch.rand(2, 5, K), torch.randint(0, C, (2, 5)),
                           alpha=0.5, temperature=2.0)
    stack.update(torch.autograd.grad(loss.loss.sum(), logits)[0])
    assert stack.steps.tolist() == [1, 1]


def test_a_student_saved_under_one_table_rule_is_refused_under_the_other_with_the_flag_that_resumes_it() -> None:
    def trained(**options) -> StudentTrainer:
        trainer = StudentTrainer(NgramStudent(BUCKETS, C, DIM, **options), KDData(None, ["t0", "t1"]), lr=1e-2,
                                 device="cpu")
        trainer.reset(seed=0)
        trainer.train_step(batch_of(0), torch.full((5, K), 0.5))
        return trainer

    adamw, sgd = trained(sparse=True), trained(**ROW_RULES["fasttext-sgd"])
    before = sgd.state_dict()
    with pytest.raises(ValueError, match="--ngram-update sparse"):
        sgd.load_state_dict(adamw.state_dict())
    after = sgd.state_dict()  # refused before anything changed: weights, optimizer state and all
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="--ngram-update sgd"):
        adamw.load_state_dict(sgd.state_dict())
    sgd.load_state_dict(trained(**ROW_RULES["fasttext-sgd"]).state_dict())  # the same rule resumes
