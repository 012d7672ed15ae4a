"""Hashed uni- and bigram ids for the ``ngrams`` lite student (fastText-style), computed from the raw text.

A text is lower-cased and split into words (runs of letters, digits and apostrophes) and single punctuation marks
(``!``, ``?``, ``:`` ...: emoticons and emphasis carry sentiment); its n-grams are the words and the pairs of
neighbouring words. Each n-gram is hashed with CRC-32 (stable across processes and machines, unlike Python's
``hash``) into ``1 .. buckets - 1``; id 0 pads. A text pair is hashed as its two texts with a separator between them,
so no bigram straddles the pair.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch

TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
PAIR_SEPARATOR = "[SEP]"
MAX_NGRAMS = 128  # per row; a tweet has about 30 (16 words and their 15 bigrams)


def ngrams(text: str, pair: str | None = None) -> list[str]:
    """The uni- and bigrams of ``text`` (and ``pair``), in order: words first, then bigrams."""
    words = TOKEN.findall(text.lower())
    if pair is not None:
        words = [*words, PAIR_SEPARATOR, *TOKEN.findall(pair.lower())]
    bigrams = [f"{a} {b}" for a, b in zip(words, words[1:]) if PAIR_SEPARATOR not in (a, b)]
    return [w for w in words if w != PAIR_SEPARATOR] + bigrams


def hashed_ngram_ids(texts: list[str], pairs: list[str] | None = None, *, buckets: int = 16384,
                     max_ngrams: int = MAX_NGRAMS) -> torch.Tensor:
    """(N, L) int32 n-gram ids in ``1 .. buckets - 1``, 0-padded; L is the most n-grams of a row (at most
    ``max_ngrams``, the first ones kept).

    :raises ValueError: when ``buckets`` < 2.
    """
    if buckets < 2:
        raise ValueError(f"buckets={buckets} is too small; use at least 2 (one id is padding), e.g. 16384")
    rows = [[zlib.crc32(g.encode()) % (buckets - 1) + 1 for g in ngrams(t, pairs[i] if pairs else None)][:max_ngrams]
            for i, t in enumerate(texts)]
    ids = np.zeros((len(rows), max(1, max(map(len, rows), default=1))), dtype=np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return torch.from_numpy(ids)
