"""The meta-gradient agent (``metagrad``, agents/metagrad.py): its weight rules on hand-made credit, its
actions on the tiny envs, the wrong teacher of test_agents.py's synthetic problem, save / load, resume and the
command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from env_helpers import ACTION_TYPES, ENV_IDS, B, K, make
from test_agents import WRONG, _checkpoint, _restore, assert_same, make_env, noisy_teacher_data
from test_cli import tiny_flags
from torch.nn.attention import SDPBackend, sdpa_kernel

import agents
from agents.metagrad import MetaGradientAgent

# Credit of 4 instances x 3 teachers (nats per unit step): mixed signs; all negative; all zero; one positive.
CREDIT = np.array([[1.0, 3.0, -1.0],
                   [-1.0, -2.0, -0.5],
                   [0.0, 0.0, 0.0],
                   [-1.0, 2.0, -3.0]])


class FakeEnv:
    """Just enough of a TeacherSelection env for the weight rules: a (4, 3) action space and fixed credit."""

    def __init__(self, credit: np.ndarray = CREDIT, action_type: str = "weights") -> None:
        import gymnasium as gym

        shape = credit.shape
        self.action_space = (gym.spaces.Box(0.0, 1.0, shape, np.float32) if action_type == "weights"
                             else gym.spaces.MultiBinary(shape))
        self.credit, self.student_steps, self.calls = credit, 0, 0
        self.teacher_names = [f"teacher{k}" for k in range(shape[1])]
        self.unwrapped = self

    def pair_credit(self) -> np.ndarray:
        self.calls += 1
        return self.credit.astype(np.float32)


def obs_of(env: FakeEnv) -> dict[str, np.ndarray]:
    return {"teacher_logits": np.full((*env.credit.shape, 3), float(env.student_steps), np.float32)}


# -- the rules, on hand-made credit
@pytest.mark.parametrize(("fallback", "rows"), [
    ("zero", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    ("uniform", [[1 / 3] * 3, [1 / 3] * 3]),
    ("best", [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),  # the highest score; ties go to the first teacher
])
def test_relu_rule_normalises_positive_credit_and_falls_back_on_rows_without_any(fallback, rows):
    env = FakeEnv()
    weights = MetaGradientAgent(env, fallback=fallback).predict(obs_of(env))
    expected = np.array([[0.25, 0.75, 0.0], *rows, [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(weights, expected, atol=1e-7)
    assert weights.dtype == np.float32


def test_softmax_rule_divides_by_temperature_times_the_batch_std():
    env = FakeEnv()
    weights = MetaGradientAgent(env, rule="softmax", weight_temperature=0.5).predict(obs_of(env))
    logits = CREDIT / (0.5 * CREDIT.std())
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    np.testing.assert_allclose(weights[[0, 3]], soft[[0, 3]], rtol=1e-6)
    np.testing.assert_array_equal(weights[[1, 2]], 0.0)  # no teacher with positive credit: fallback 'zero'
    assert weights[0, 1] > weights[0, 0] > weights[0, 2] > 0


@pytest.mark.parametrize(("fallback", "rows"), [("zero", [[0, 0, 0]] * 2), ("uniform", [[1, 1, 1]] * 2),
                                                 ("best", [[0, 0, 1], [1, 0, 0]])])
def test_select_mode_keeps_the_teachers_with_positive_credit(fallback, rows):
    env = FakeEnv(action_type="select")
    action = MetaGradientAgent(env, fallback=fallback).predict(obs_of(env))
    np.testing.assert_array_equal(action, [[1, 1, 0], *rows, [0, 1, 0]])
    assert action.dtype == np.int8 and env.action_space.contains(action)


def test_smoothing_mixes_in_each_teachers_running_mean_credit_and_restarts_with_a_fresh_student():
    env = FakeEnv(np.array([[1.0, -1.0], [3.0, -1.0]]))
    agent = MetaGradientAgent(env, smoothing=0.5, smoothing_decay=0.9)
    agent.predict(obs_of(env))
    np.testing.assert_allclose(agent.teacher_credit, [2.0, -1.0])  # the first batch's mean
    env.student_steps, env.credit = 1, np.array([[-2.0, 1.0], [-2.0, 1.0]])
    scores = agent.scores(obs_of(env))
    means = 0.9 * np.array([2.0, -1.0]) + 0.1 * np.array([-2.0, 1.0])  # [1.6, -0.8]
    np.testing.assert_allclose(agent.teacher_credit, means)
    np.testing.assert_allclose(scores, 0.5 * env.credit + 0.5 * means)
    np.testing.assert_allclose(agent.predict(obs_of(env)), [[0.0, 1.0], [0.0, 1.0]])  # scores [-0.2, 0.1]
    assert env.calls == 2  # the same observation again: no new credit, the running means stay
    np.testing.assert_allclose(agent.teacher_credit, means)
    env.student_steps = 0  # reset(): a fresh student
    agent.predict(obs_of(env))
    np.testing.assert_allclose(agent.teacher_credit, [-2.0, 1.0])


@pytest.mark.parametrize(("option", "value"), [("rule", "sigmoid"), ("fallback", "none"),
                                               ("weight_temperature", 0.0), ("smoothing", 1.5)])
def test_bad_options_are_errors_that_name_the_value(option, value):
    shown = repr(value) if isinstance(value, str) else value
    with pytest.raises(ValueError, match=f"{option}={shown}"):
        MetaGradientAgent(FakeEnv(), **{option: value})


# -- on the tiny envs
@ACTION_TYPES
@ENV_IDS
def test_actions_on_the_tiny_envs_follow_the_envs_credit(env_id, action_type, env_kwargs):
    env = make(env_id, env_kwargs, action_type=action_type)
    agent = agents.make("metagrad", env, seed=0)
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        with sdpa_kernel(SDPBackend.MATH):  # the full student's fused attention has no double backward
            credit = env.unwrapped.pair_credit()
        action = agent.predict(obs)
        assert action.shape == (B, K) and env.action_space.contains(action)
        if action_type == "weights":
            sums = action.sum(1)
            assert np.all(action >= 0) and np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0)), action
            positive = np.maximum(credit, 0)
            totals = positive.sum(1, keepdims=True)
            expected = positive / np.where(totals > 0, totals, 1)
            np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(action, credit > 0)
        obs, *_ = env.step(action)
    assert {"positive_pairs", "fallback_rows"} <= set(agent.metrics)


# -- the synthetic problem: teacher 2 of 3 is confidently wrong
def test_the_wrong_teacher_gets_little_weight_over_unpicked_seeds():
    # The agent has no randomness: the seed sets the data (centres, noise, teachers' logits), the student's
    # init and the batch order. The weights are the env's effective ones (rows normalised), over one episode.
    ratios = []
    for seed in range(5):
        env = make_env(noisy_teacher_data(seed))
        seen: list[np.ndarray] = []
        agents.make("metagrad", env, seed=seed).learn(100, callback=lambda local, seen=seen: seen.append(
            local["info"]["weights"]))
        weights = np.concatenate(seen).mean(0)  # (K,)
        ratios.append(float(weights[WRONG] / weights[:WRONG].mean()))
    assert sum(r < 0.5 for r in ratios) >= 4, ratios


# -- state
def test_save_load_round_trip(tmp_path):
    data = noisy_teacher_data()
    env = make_env(data)
    agent = agents.make("metagrad", env, seed=3, rule="softmax", weight_temperature=0.5, fallback="best")
    agent.learn(5)
    assert agent.state_dict() == {}
    agent.save(tmp_path / "metagrad")
    assert json.loads((tmp_path / "metagrad" / "agent.json").read_text())["name"] == "metagrad"
    loaded = agents.load(tmp_path / "metagrad", env)  # on the same env: its credit is that env's batch
    assert type(loaded) is MetaGradientAgent and loaded.config == agent.config
    obs, _ = env.reset(seed=7)
    action = agent.predict(obs)
    assert action[:, WRONG].mean() < action[:, :WRONG].mean()
    np.testing.assert_array_equal(action, loaded.predict(obs))


def test_learn_resumed_with_smoothing_continues_exactly(tmp_path):
    data, options = noisy_teacher_data(), {"episode_steps": 10, "reward_interval": 3}
    kwargs = {"seed": 2, "smoothing": 0.5}
    straight_env = make_env(data, **options)
    rewards: list[float] = []
    straight = agents.make("metagrad", straight_env, **kwargs).learn(
        15, callback=lambda local: rewards.append(local["reward"]))
    env = make_env(data, **options)
    first = agents.make("metagrad", env, **kwargs).learn(15, callback=lambda local: local["step"] < 6)
    saved = _checkpoint(env, first, tmp_path / "c.safetensors")
    assert len(saved["training"]["teacher_credit"]) == 3
    env, resumed = _restore(data, "metagrad", kwargs, saved, **options)
    after: list[float] = []
    resumed.learn(15, callback=lambda local: after.append(local["reward"]), resume=True)
    assert after == rewards[7:]
    assert_same(straight.training_state(), resumed.training_state())


# -- the command line
def test_kd_gym_train_runs_metagrad(tiny_env_kwargs, tmp_path, capsys):
    from kd_gym.cli import main

    out = tmp_path / "run"
    assert main(["train", "--agent", "metagrad", "--seed", "1", "--steps", "6", "--out", str(out), "--rule",
                 "softmax", "--smoothing", "0.5", *tiny_flags(tiny_env_kwargs)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["agent"] == "metagrad" and line["steps"] == 6 and 0.0 <= line["test_metric"] <= 1.0
    config = json.loads((out / "agent" / "agent.json").read_text())["config"]
    assert config["rule"] == "softmax" and config["smoothing"] == 0.5
