"""The ngrams lite student: hashed uni- and bigram ids, and the fastText-style student trained on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_gym.prepare.ngrams import hashed_ngram_ids, ngrams
from kd_gym.student import NgramStudent


def test_ngrams_are_words_then_bigrams_and_a_pair_has_no_bigram_across_it():
    assert ngrams("Great flight!") == ["great", "flight", "!", "great flight", "flight !"]
    assert ngrams("a b", "c") == ["a", "b", "c", "a b"]


def test_ids_are_stable_padded_and_in_range():
    ids = hashed_ngram_ids(["late again :(", "ok", ""], buckets=50)
    assert ids.dtype == torch.int32 and ids.shape == (3, 7)  # "late again : (" -> 4 words + 3 bigrams
    assert (ids[0] > 0).all() and (ids[1, 1:] == 0).all() and (ids[2] == 0).all()
    assert int(ids.max()) < 50
    # CRC-32, not Python's salted hash: the same ids in every process (values written down once)
    assert hashed_ngram_ids(["late"], buckets=16384).tolist() == [[int(__import__("zlib").crc32(b"late") % 16383 + 1)]]
    with pytest.raises(ValueError, match="buckets=1"):
        hashed_ngram_ids(["x"], buckets=1)


def test_ngram_student_averages_real_ngrams_only_and_resets_to_a_seeded_draw():
    student = NgramStudent(buckets=20, num_labels=3, dim=4)
    assert student.embedding.weight[0].abs().sum() == 0  # the padding row
    ids = torch.tensor([[3, 5, 0, 0], [3, 5, 5, 0]])
    logits, representation = student(ids)
    table = student.embedding.weight.detach()
    torch.testing.assert_close(representation[0], (table[3] + table[5]) / 2)
    torch.testing.assert_close(representation[1], (table[3] + 2 * table[5]) / 3)
    assert logits.shape == (2, 3)
    assert table.abs().max() <= 1 / 4  # fastText's uniform +-1/dim init

    def drawn(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        student.reset_parameters()
        return [p.detach().clone() for p in student.parameters()]

    first, again, other = drawn(0), drawn(0), drawn(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_ngram_env_learns_from_gold_labels(env_kwargs):
    """On the tiny task the default (ngrams) student fits its labelled rows: the train CE falls."""
    import gymnasium as gym

    env = gym.make("kd_gym/TeacherSelectionLite-v0", **{**env_kwargs, "episode_steps": 60, "gold_labels": None})
    assert env.unwrapped.config.lite_student == "ngrams"
    env.reset(seed=0)
    ce = []
    for _ in range(60):
        _, _, _, _, info = env.step(np.zeros((8, env.unwrapped.num_teachers), dtype=np.float32))  # gold labels only
        ce.append(info["ce"])
    assert np.mean(ce[-10:]) < 0.8 * np.mean(ce[:10])
