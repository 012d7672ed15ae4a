"""Build the tensors of a :class:`~kd_gym.data.KDData` from a task, a teacher pool and the student's inputs."""

from __future__ import annotations

import torch

from kd_gym.data import KDData, SplitTensors
from kd_gym.prepare.embeddings import SentenceEncoder
from kd_gym.prepare.ngrams import hashed_ngram_ids
from kd_gym.tasks import SPLITS, Task
from kd_gym.teachers import TeacherPool


def _word_counts(task: Task, split: str) -> torch.Tensor:
    pairs = task.text_pairs(split)
    texts = task.texts(split)
    counts = [len(t.split()) + (len(pairs[i].split()) if pairs is not None else 0) for i, t in enumerate(texts)]
    return torch.tensor(counts, dtype=torch.long)


def build_lite_data(task: Task, pool: TeacherPool, encoder: SentenceEncoder | None, *,
                    ngram_buckets: int | None = None) -> KDData:
    """The lite students' inputs + teacher logits (train and dev).

    :param encoder: gives ``inputs["embeddings"]`` (N, D), frozen sentence embeddings (None: none).
    :param ngram_buckets: gives ``inputs["ngram_ids"]`` (N, L), hashed uni- and bigram ids (None: none).
    """
    if encoder is None and ngram_buckets is None:
        raise ValueError("build_lite_data needs an encoder (embeddings), ngram_buckets (n-gram ids) or both")
    pool.check_labels(task)
    splits = {}
    for split in SPLITS:
        inputs = {}
        if ngram_buckets is not None:
            inputs["ngram_ids"] = hashed_ngram_ids(task.texts(split), task.text_pairs(split), buckets=ngram_buckets)
        if encoder is not None:
            inputs["embeddings"] = encoder.encode(task, split)
        splits[split] = SplitTensors(
            inputs=inputs,
            labels=torch.as_tensor(task.labels(split), dtype=torch.long),
            lengths=_word_counts(task, split),
            teacher_logits=pool.logits(task, split) if split != "test" else None,
        )
    return KDData(task, pool.names, splits)


def build_full_data(task: Task, pool: TeacherPool, tokenizer, max_length: int = 64) -> KDData:
    """Token ids (the student's tokenizer) + teacher logits (train and dev) for the full student."""
    pool.check_labels(task)
    splits = {}
    for split in SPLITS:
        pairs = task.text_pairs(split)
        encoded = tokenizer(task.texts(split), pairs, truncation=True, max_length=max_length,
                            padding="longest", return_tensors="pt")
        inputs = {k: v.to(torch.int32) for k, v in encoded.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        splits[split] = SplitTensors(
            inputs=inputs,
            labels=torch.as_tensor(task.labels(split), dtype=torch.long),
            lengths=inputs["attention_mask"].sum(1).long(),
            teacher_logits=pool.logits(task, split) if split != "test" else None,
        )
    return KDData(task, pool.names, splits)
