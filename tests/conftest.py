"""Shared fixtures: tiny BERT teachers and students saved with save_pretrained, and a tiny csv task."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["negative", "neutral", "positive"]
WORDS = {
    "negative": ["awful", "bad", "hate", "delay", "broken", "worst"],
    "neutral": ["flight", "today", "gate", "news", "game", "phone"],
    "positive": ["great", "love", "thanks", "good", "best", "happy"],
}


def _tiny_bert(folder: Path, num_labels: int, seed: int, id2label: dict[int, str] | None = None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws}) + [
        "the", "a", "is", "was", "my", "and"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)  # reads vocab.txt (transformers 4 and 5)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        id2label=id2label or {i: LABELS[i] for i in range(num_labels)},
                        label2id={v: k for k, v in (id2label or {i: LABELS[i] for i in range(num_labels)}).items()})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences of 3-8 words whose label is the majority sentiment word among them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = list(rng.choice(WORDS[label], size=3)) + list(rng.choice(["the", "a", "is", "my", "flight"], size=int(rng.integers(0, 5))))
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    pd.DataFrame(make_rows(300)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("teachers")
    return [_tiny_bert(root / f"teacher{k}", 3, seed=k) for k in range(3)]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("encoder") / "encoder", 3, seed=99)


@pytest.fixture()
def kd_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KD_GYM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def tiny_env_kwargs(tiny_csv, tiny_teachers, tiny_encoder, kd_home) -> dict:
    """Keywords for gymnasium.make that build a tiny, fast environment."""
    return {
        "task": str(tiny_csv),
        "teachers": [str(p) for p in tiny_teachers],
        "student_checkpoint": str(tiny_encoder),
        "batch_size": 8,
        "episode_steps": 12,
        "reward_interval": 3,
        "dev_subset": 20,
        "max_length": 16,
        "device": "cpu",
    }


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch on one intra-op thread: the tiny test models gain nothing from more, and on a busy 2-core machine
    OpenMP threads waiting for each other make a tiny-BERT training step ~100x slower (seconds, not milliseconds)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory):
    """One cache folder per test module: teacher logits and embeddings are computed once, not once per test."""
    return tmp_path_factory.mktemp("env_cache")


@pytest.fixture()
def env_kwargs(tiny_env_kwargs, env_cache) -> dict:
    """tiny_env_kwargs with the module's shared cache folder."""
    return {**tiny_env_kwargs, "cache_dir": str(env_cache)}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread avoids oversubscription (10x faster on a busy 2-core machine); a module asks for it
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
