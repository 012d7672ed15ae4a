"""Tests for kd_gym.rewards through the env: the built-in rewards, when they are measured, scaling, user rewards."""

from __future__ import annotations

import numpy as np
import pytest
from env_helpers import BUILTIN_REWARDS, ENV_IDS, LR, make, weights_actions

import kd_gym.rewards
from kd_gym.rewards import Reward, register_reward


@pytest.mark.parametrize("reward", ["dev_delta", "dev_loss_delta"])
def test_interval_rewards_are_measured_at_the_episode_end_too(reward, env_kwargs) -> None:
    # 5 steps with reward_interval 3: measured after steps 3 and 5, so no step goes uncredited.
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, reward=reward, episode_steps=5, lr=1e-2)
    _, info = env.reset(seed=0)
    start = env.unwrapped.evaluate("dev", subset=True)
    steps = [env.step(action) for action in weights_actions(5)]
    assert [s[4]["reward_measured"] for s in steps] == [False, False, True, False, True]
    assert [s[1] == 0.0 for s in steps][:2] == [True, True] and steps[3][1] == 0.0
    end = env.unwrapped.evaluate("dev", subset=True)
    total = sum(s[1] for s in steps)
    expected = 100 * (end["metric"] - start["metric"]) if reward == "dev_delta" else start["loss"] - end["loss"]
    assert total == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ rewards


def test_builtin_rewards_are_registered() -> None:
    assert set(BUILTIN_REWARDS) <= set(kd_gym.rewards.REWARDS)


@ENV_IDS
@pytest.mark.parametrize("reward", BUILTIN_REWARDS)
def test_builtin_rewards(env_id, reward, env_kwargs) -> None:
    env = make(env_id, env_kwargs, reward=reward, lr=LR[env_id])
    unwrapped = env.unwrapped
    _, info = env.reset(seed=0)
    start = unwrapped.trainer.evaluate("dev", unwrapped.dev_indices)
    rewards, infos = [], []
    truncated = False
    for action in weights_actions(12):
        assert not truncated
        _, r, terminated, truncated, info = env.step(action)
        assert not terminated
        rewards.append(r)
        infos.append(info)
    assert truncated
    end = unwrapped.trainer.evaluate("dev", unwrapped.dev_indices)
    rewards = np.array(rewards)
    measured = np.arange(1, 13) % 3 == 0  # reward_interval = 3
    interval = reward in ("dev_delta", "dev_loss_delta")
    assert [i["reward_measured"] for i in infos] == (measured.tolist() if interval else [True] * 12)
    if reward == "neg_ce":
        np.testing.assert_allclose(rewards, [-i["ce"] for i in infos], rtol=1e-6)
    elif reward == "neg_ce_kd":
        np.testing.assert_allclose(rewards, [-(i["ce"] + i["kd"]) for i in infos], rtol=1e-5)
        assert all(i["kd"] > 0 for i in infos)
    else:
        assert np.all(rewards[~measured] == 0.0)
        assert info["dev_metric"] == end["metric"] and info["dev_loss"] == end["loss"]
        if reward == "dev_delta":
            assert rewards.sum() == pytest.approx(100 * (end["metric"] - start["metric"]), abs=1e-9)
            assert np.all(np.isin(np.round(rewards * 20 / 100, 6), np.arange(-20, 21)))  # steps of 1/20 of the subset
        else:
            assert rewards.sum() == pytest.approx(start["loss"] - end["loss"], rel=1e-6)
            assert np.all(rewards[measured] != 0.0)
    if env_id.endswith("Lite-v0") or reward != "dev_delta":
        assert np.any(rewards != 0.0)  # the student moves enough for every reward to see it


def test_dev_delta_follows_the_dev_metric(env_kwargs) -> None:
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, lr=LR["kd_gym/TeacherSelectionLite-v0"])
    _, info = env.reset(seed=0)
    previous = info["dev_metric"]
    for t, action in enumerate(weights_actions(12), start=1):
        _, reward, _, _, info = env.step(action)
        if t % 3 == 0:
            assert reward == pytest.approx(100 * (info["dev_metric"] - previous), abs=1e-9)
            previous = info["dev_metric"]


def test_reward_scale_multiplies_the_reward(env_kwargs) -> None:
    rewards = {}
    for scale in (1.0, -2.5):
        env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, reward="neg_ce", reward_scale=scale)
        env.reset(seed=0)
        rewards[scale] = [env.step(a)[1] for a in weights_actions(3)]
    np.testing.assert_allclose(rewards[-2.5], -2.5 * np.array(rewards[1.0]), rtol=1e-6)


def test_custom_reward_registered_by_the_user(env_kwargs, monkeypatch) -> None:
    monkeypatch.setattr(kd_gym.rewards, "REWARDS", dict(kd_gym.rewards.REWARDS))  # undone after the test

    @register_reward("test_minus_kd_times_steps")
    class MinusKDTimesSteps(Reward):
        def reset(self, env) -> None:
            self.resets = getattr(self, "resets", 0) + 1

        def __call__(self, env, loss) -> float:
            return -env.student_steps * loss.kd.item()

    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, reward="test_minus_kd_times_steps")
    env.reset(seed=0)
    assert isinstance(env.unwrapped.reward_fn, MinusKDTimesSteps) and env.unwrapped.reward_fn.resets == 1
    for t, action in enumerate(weights_actions(3), start=1):
        _, reward, _, _, info = env.step(action)
        assert reward == pytest.approx(-t * info["kd"], rel=1e-6) and reward < 0
    # A Reward instance works too, without registering.
    instance = MinusKDTimesSteps()
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, reward=instance)
    env.reset(seed=0)
    assert env.unwrapped.reward_fn is instance


def test_unknown_reward_lists_the_registered_ones(env_kwargs) -> None:
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'") as error:
        make("kd_gym/TeacherSelectionLite-v0", env_kwargs, reward="no_such_reward")
    assert all(name in str(error.value) for name in BUILTIN_REWARDS)
