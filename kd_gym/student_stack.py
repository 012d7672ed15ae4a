"""N lite students as stacked tensors: one batched forward, backward and AdamW update for all of them.

Student n of :class:`StackedLiteStudents` (:class:`StackedNgramStudents`) computes what a
:class:`~kd_gym.student.StudentTrainer` over a :class:`~kd_gym.student.LiteStudent`
(:class:`~kd_gym.student.NgramStudent`) computes, from its own state only:

- the same initial weights for the same seed: the template module's own ``reset_parameters`` runs on a random stream
  seeded like the trainer's (``StudentTrainer.reset``), and the result is copied into slot n;
- the same dropout masks: one ``bernoulli_(1 - p)`` of shape (B, H) per training forward pass from the student's own
  generator, which is what ``nn.Dropout`` draws on the CPU;
- the same layers (``baddbmm`` per student computes what ``F.linear`` computes per student) and their gradients
  (written out: the products autograd computes for ``nn.Linear``, ``nn.GELU`` and ``nn.Dropout``; for the n-gram
  table, the masked mean's backward and the row-by-row accumulation of ``nn.Embedding``'s), the same gradient
  clipping of each student's global norm and the same AdamW arithmetic (``torch.optim.AdamW``'s single-tensor update,
  elementwise, with each student's own step count).

The sparse n-gram students take the single student's sparse path for all N at once. Under fastText's SGD
(``NgramStudent(sgd_lr=...)``, the default): the real positions summed by one ``embedding_bag``, each student's
clipping over its classifier alone, AdamW on the classifiers, and each position's gradient times its student's rate
added into its row (:func:`~kd_gym.sparse.sgd_rows_`). Under lazy AdamW (``NgramStudent(sparse=True)``): the rows
each batch touched and their gradients (:func:`~kd_gym.sparse.row_gradients`), each student's clipping over its own
rows and classifier, and the lazy AdamW of :mod:`kd_gym.sparse` with one block per student.

So the students' weights agree with the single trainers' to float32 rounding (a batched matrix product may take
another kernel than a single one for some shapes and layouts; on a CPU they are bit-identical at the tiny test sizes
and at the lite env's default sizes, tests/test_vector_sizes.py); the reported per-student loss parts
(:func:`stacked_kd_loss`) are reduced in another order (~1e-7).

The code: :mod:`kd_gym.stacked_base` (what every stack shares), :mod:`kd_gym.stacked_lite`,
:mod:`kd_gym.stacked_ngrams`; here, the stack for a template (:func:`stacked_students`) and the loss of N students
(:func:`stacked_kd_loss`).
"""

from __future__ import annotations

import torch
from torch import nn

from kd_gym.losses import KDLoss, multi_teacher_kd_loss
from kd_gym.stacked_base import StackedStudents
from kd_gym.stacked_lite import StackedLiteStudents
from kd_gym.stacked_ngrams import StackedNgramStudents
from kd_gym.student import LiteStudent, NgramStudent

__all__ = ["StackedLiteStudents", "StackedNgramStudents", "StackedStudents", "stacked_kd_loss", "stacked_students"]


def stacked_students(template: nn.Module, num_students: int, **options) -> StackedStudents:
    """The stack of ``num_students`` students of ``template``'s kind (a LiteStudent or an NgramStudent)."""
    kinds = {LiteStudent: StackedLiteStudents, NgramStudent: StackedNgramStudents}
    if type(template) not in kinds:
        raise NotImplementedError(f"no stacked version of {type(template).__name__}; stacked students: "
                                  f"{[kind.__name__ for kind in kinds]}")
    return kinds[type(template)](template, num_students, **options)


def stacked_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                    *, alpha: float, temperature: float, labelled: torch.Tensor | None = None,
                    teacher_probs: torch.Tensor | None = None) -> KDLoss:
    """:func:`~kd_gym.losses.multi_teacher_kd_loss` of N students at once, each a mean over its own B rows.

    :param logits: (N, B, C); :param teacher_logits: (N, B, K, C); :param weights: (N, B, K); :param labels: (N, B);
    :param labelled: (N, B) bool or None; :param teacher_probs: (N, B, K, C) or None.
    :return: ``loss``, ``ce``, ``kd``: (N,) per student (as the single loss gives them for its batch);
        ``per_instance``: (N, B); ``weights``: (N, B, K) normalised as the single loss normalises them.
    """
    n, b, c = logits.shape
    k = teacher_logits.shape[2]
    flat = (lambda t, *shape: None if t is None else t.reshape(n * b, *shape))  # noqa: E731
    rows = multi_teacher_kd_loss(flat(logits, c), flat(teacher_logits, k, c), flat(weights, k), flat(labels),
                                 alpha=alpha, temperature=temperature, labelled=flat(labelled),
                                 teacher_probs=flat(teacher_probs, k, c))  # every row's loss is the single loss's row
    per_instance = rows.per_instance.view(n, b)
    with torch.no_grad():  # the reported parts per student: the single loss's CE and KD means over this student's rows
        ce, kd = rows.instance_ce.view(n, b), rows.instance_kd.view(n, b)
        known = torch.ones_like(ce) if labelled is None else labelled.float()
        has_teacher = (weights.sum(-1) > 0).float()
        ce_mean = (ce * known).sum(1) / known.sum(1).clamp_min(1)
        kd_mean = (kd * has_teacher).sum(1) / has_teacher.sum(1).clamp_min(1)
    return KDLoss(loss=per_instance.mean(1), ce=ce_mean, kd=kd_mean, per_instance=per_instance,
                  weights=rows.weights.view(n, b, k))
