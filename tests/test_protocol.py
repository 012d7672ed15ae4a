"""The train-eval protocol: the agent learns over several students, its frozen policy trains fresh evaluation
students on unseen seeds, and their mean is the result."""

from __future__ import annotations

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from agent_data import assert_same

import agents
from agents.experiments import protocol
from agents.experiments.protocol import (
    EVAL_SEED_BASE,
    check_protocol,
    eval_seeds,
    evaluate_policy,
    why_not_at_once,
)
from agents.experiments.run import TrainingMonitor, train_student
from agents.reinforce_paper import PaperReinforceAgent
from kd_gym.cli import main
from tests.test_cli import tiny_flags


@pytest.fixture()
def env_kwargs(env_kwargs: dict) -> dict:
    """The conftest's env_kwargs with the mlp lite student (the vector env batches both lite students; the n-gram
    student is checked where it matters: the training phase, tests/test_vector.py for the identity)."""
    return {**env_kwargs, "lite_student": "mlp"}


LITE = "kd_gym/TeacherSelectionLite-v0"
STEPS = 6


def test_eval_seeds_are_shared_by_agents_and_disjoint_across_run_seeds():
    assert eval_seeds(0, 3) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]
    seen = [s for seed in range(5) for s in eval_seeds(seed, 10)]
    assert len(set(seen)) == len(seen) and min(seen) >= EVAL_SEED_BASE


def test_a_fixed_agent_skips_training_and_scores_the_mean_of_its_evaluation_students(env_kwargs):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": STEPS})
    result = train_student("uniform", steps=STEPS, seed=3, built_env=env, progress=False, protocol="train-eval",
                           train_students=5, eval_students=2)
    assert result.extra["train_student_steps"] == 0 and result.extra["protocol"] == "train-eval"
    # The same two students by hand: fresh students on the evaluation seeds, equal weights, STEPS updates each.
    tests = []
    for seed in eval_seeds(3, 2):
        obs, _ = env.reset(seed=seed)
        for _ in range(STEPS):
            obs, *_ = env.step(np.ones(env.action_space.shape, dtype=np.float32))
        tests.append(env.unwrapped.evaluate("test")["metric"])
    assert result.test_metric == pytest.approx(np.mean(tests), abs=1e-12)
    assert result.history[-1]["student_step"] == STEPS  # the curve of the first evaluation student


def test_a_learning_agent_trains_over_several_students_then_evaluates_frozen(env_kwargs):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": STEPS})
    result = train_student("reinforce-paper", steps=STEPS, seed=0, built_env=env, progress=False, protocol="train-eval",
                           train_students=3, eval_students=2, agent_kwargs={"update_interval": 2})
    assert result.extra["train_student_steps"] == 3 * STEPS
    # Evaluation changes nothing the agent has learned.
    agent = agents.make("reinforce-paper", env, seed=0, update_interval=2)
    agent.learn(2 * STEPS)
    before = copy.deepcopy(agent.state_dict())
    monitors = [TrainingMonitor(env, 2) for _ in range(2)]
    scores = evaluate_policy(agent, monitors, STEPS, eval_seeds(0, 2))
    assert [s["seed"] for s in scores] == eval_seeds(0, 2)
    assert_same(agent.state_dict(), before)


def test_bench_runs_the_protocol_and_records_it(tiny_env_kwargs, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--agents", "uniform,gold-router", "--seeds", "0", "--steps", "4", "--out", str(out), "--no-oracle",
            *tiny_flags(tiny_env_kwargs)]
    assert main([*args, "--protocol", "train-eval", "--train-students", "2", "--eval-students", "2"]) == 0
    frame = pd.read_csv(out / "results.csv").set_index("agent")
    assert frame.loc["gold-router", "train_student_steps"] == 8 and frame.loc["uniform", "train_student_steps"] == 0
    assert set(frame["protocol"]) == {"train-eval"}
    report = (out / "results.md").read_text()
    assert "train-eval protocol (2 training students, 2 evaluation students per seed)" in report
    rows: dict[str, str] = {}
    for line in report.splitlines():  # the first table's rows
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert "student steps to learn |" in rows["agent"]  # the training cost beside the result
    assert rows["gold-router"].endswith(" 8 |") and rows["uniform"].endswith(" 0 |")
    # The online cells of the same agents are other cells (their config hash differs), so both are kept.
    assert main(args) == 0
    assert len(pd.read_csv(out / "results.csv")) == 4


LONG_STEPS, INTERVAL = 12, 3  # four dev-curve records after the first, two of them mid-episode
# The vector env reports the loss parts CE and KD as means taken in another order than the single env's (float32
# rounding, ~1e-7); everything else a monitor records, and every result, is bit-identical.
ROUNDED = {"train/ce", "train/kd"}


class FrozenReinforce(PaperReinforceAgent):
    """REINFORCE declaring what its deterministic predict is: a function of the observation and the policy."""

    pure_predict = True


def evaluate_both_ways(agent, env, seeds, monkeypatch) -> tuple:
    """(results, monitors) of evaluate_policy at once (a vector env) and one after another (the reference)."""
    runs = []
    for at_once in (True, False):
        monitors = [TrainingMonitor(env, INTERVAL, keep_student=False) for _ in seeds]
        with monkeypatch.context() as patch:
            if at_once:
                assert why_not_at_once(agent, monitors, LONG_STEPS) is None
                patch.setattr(protocol, "_evaluate_one_by_one", None)  # any use of the loop fails
            else:
                patch.setattr(protocol, "why_not_at_once", lambda *args: "the reference")
            runs.append((evaluate_policy(agent, monitors, LONG_STEPS, seeds), monitors))
    return runs


def assert_same_students(vector_run, loop_run) -> None:
    (results, monitors), (expected, expected_monitors) = vector_run, loop_run
    for got, want in zip(results, expected):
        assert (got["seed"], got["dev_metric"], got["test_metric"]) == (want["seed"], want["dev_metric"],
                                                                          want["test_metric"])
        assert got["student"].keys() == want["student"].keys()
        for name in want["student"]:
            assert torch.equal(got["student"][name], want["student"][name]), name
    for monitor, reference in zip(monitors, expected_monitors):
        assert len(monitor.history) == len(reference.history) == LONG_STEPS // INTERVAL + 1
        for record, expected_record in zip(monitor.history, reference.history):
            assert record.keys() == expected_record.keys()
            exact = {k: v for k, v in record.items() if k not in ROUNDED}
            assert exact == {k: v for k, v in expected_record.items() if k not in ROUNDED}
            for key in ROUNDED & record.keys():
                assert record[key] == pytest.approx(expected_record[key], abs=1e-6), key


@pytest.mark.parametrize("name", ["uniform", "confidence", "single:1"])
def test_a_fixed_agents_students_trained_at_once_are_the_ones_trained_in_turn(name, env_kwargs, monkeypatch):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": LONG_STEPS})
    agent = agents.make(name, env, seed=0)
    assert_same_students(*evaluate_both_ways(agent, env, eval_seeds(2, 3), monkeypatch))


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_a_frozen_learning_agents_students_trained_at_once_are_the_ones_trained_in_turn(name, env_kwargs,
                                                                                        monkeypatch):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": LONG_STEPS})
    if name == "reinforce":
        agent = FrozenReinforce(env, seed=0, update_interval=2)
    else:
        agent = agents.make(name, env, seed=0, n_steps=4, minibatch_size=48)
    agent.learn(2 * LONG_STEPS)
    weights = agent.predict(env.reset(seed=0)[0], deterministic=True)
    assert weights.std() > 1e-3  # a policy whose weights differ per instance and teacher
    assert_same_students(*evaluate_both_ways(agent, env, eval_seeds(0, 3), monkeypatch))


def test_a_train_eval_run_writes_the_same_files_at_once_and_in_turn(env_kwargs, monkeypatch, tmp_path):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": LONG_STEPS})
    run = dict(steps=LONG_STEPS, seed=1, built_env=env, progress=False, protocol="train-eval", eval_students=2,
               eval_interval=INTERVAL)
    result = train_student("best_teacher", out_dir=tmp_path / "at_once", **run)
    monkeypatch.setattr(protocol, "why_not_at_once", lambda *args: "the reference")
    expected = train_student("best_teacher", out_dir=tmp_path / "in_turn", **run)
    assert (result.dev_metric, result.test_metric) == (expected.dev_metric, expected.test_metric)
    at_once, in_turn = tmp_path / "at_once", tmp_path / "in_turn"
    assert (at_once / "student.safetensors").read_bytes() == (in_turn / "student.safetensors").read_bytes()
    history, expected_history = pd.read_csv(at_once / "history.csv"), pd.read_csv(in_turn / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns=list(ROUNDED)), expected_history.drop(columns=list(ROUNDED)),
                                  check_exact=True)
    pd.testing.assert_frame_equal(history[list(ROUNDED)], expected_history[list(ROUNDED)], atol=1e-6)


@pytest.mark.parametrize("case, reason", [
    ({"agent": "random"}, "agent 'random' has pure_predict False"),
    ({"agent": "oracle"}, "agent 'oracle' has pure_predict False"),
    ({"steps": LONG_STEPS - 1}, "steps=11 is not the env's episode_steps=12"),
    ({"keep_student": True}, "a monitor keeps its student"),
    ({"reward": "dev_loss_paired"}, "reward='dev_loss_paired'"),
    ({"credit": True}, "credit=True"),
])
def test_students_are_trained_in_turn_where_at_once_would_not_be_the_same(case, reason, env_kwargs, monkeypatch):
    env_options = {k: v for k, v in case.items() if k in ("reward", "credit")}
    env = gym.make(LITE, **{**env_kwargs, **env_options, "episode_steps": LONG_STEPS})
    agent = agents.make(case.get("agent", "uniform"), env, seed=0)
    steps = case.get("steps", LONG_STEPS)
    monitors = [TrainingMonitor(env, INTERVAL, keep_student=case.get("keep_student", False)) for _ in range(2)]
    assert reason in why_not_at_once(agent, monitors, steps)
    monkeypatch.setattr(protocol, "_evaluate_at_once", None)  # the vector path would fail
    results = evaluate_policy(agent, monitors, steps, eval_seeds(0, 2))
    assert [r["seed"] for r in results] == eval_seeds(0, 2)
    assert [monitor.steps for monitor in monitors] == [steps, steps]


def test_a_full_student_or_a_gpu_is_evaluated_in_turn(env_kwargs):
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": LONG_STEPS})
    agent = agents.make("uniform", env, seed=0)
    monitors = [TrainingMonitor(env, INTERVAL, keep_student=False)]
    config = env.unwrapped.config
    for change, reason in (({"student": "full"}, "student='full'"), ({"device": "cuda"}, "device='cuda'"),
                           ({"precision": "bf16"}, "precision='bf16'")):
        env.unwrapped.config = dataclasses.replace(config, **change)  # only the options are read
        try:
            assert reason in why_not_at_once(agent, monitors, LONG_STEPS)
        finally:
            env.unwrapped.config = config


@pytest.mark.parametrize("bad, message", [
    (("offline", 1, 1), "protocol='offline' is not one of ['online', 'train-eval']"),
    (("train-eval", 0, 1), "train_students=0 is invalid"),
    (("train-eval", 1, 1.5), "eval_students=1.5 is invalid"),
])
def test_bad_protocol_values_name_the_value(bad, message):
    with pytest.raises(ValueError) as error:
        check_protocol(*bad)
    assert message in str(error.value)


def test_the_router_learns_over_its_training_students_at_once_where_the_env_allows(env_kwargs):
    # train-eval's training phase: one vector env of the train_students students, one batched student step and one
    # router step per vector step (agents.Agent.learn_over); the same command twice gives the same result
    env = gym.make(LITE, **{**env_kwargs, "episode_steps": STEPS})
    kwargs = {"steps": STEPS, "seed": 0, "built_env": env, "progress": False, "protocol": "train-eval",
              "train_students": 3, "eval_students": 2, "agent_kwargs": {"warmup_steps": 2}}
    first, second = train_student("gold-router", **kwargs), train_student("gold-router", **kwargs)
    assert first.extra["train_phase"] == "3 students at once"
    assert (first.dev_metric, first.test_metric) == (second.dev_metric, second.test_metric)
    assert first.extra["agent_metrics"]["updates"] == 1  # at step 2, the first after the warm-up (the next: step 6)
    # by hand: learn_over a vector env of 3 students, then the frozen router trains the evaluation students
    agent = agents.make("gold-router", env, seed=0, warmup_steps=2)
    agent.learn_over(protocol._vector_env(env.unwrapped, 3), STEPS)
    monitors = [TrainingMonitor(env, 2) for _ in range(2)]
    tests = [r["test_metric"] for r in evaluate_policy(agent, monitors, STEPS, eval_seeds(0, 2))]
    assert first.test_metric == pytest.approx(np.mean(tests), abs=1e-12)
    # the n-gram student (the default) learns at once too; the paper's learner and a reward the vector env does not
    # compute learn one student at a time, and say why
    ngrams = gym.make(LITE, **{**env_kwargs, "lite_student": "ngrams", "episode_steps": STEPS})
    assert train_student("gold-router", **{**kwargs, "built_env": ngrams}).extra["train_phase"] == "3 students at once"
    paper = train_student("reinforce-paper", **{**kwargs, "agent_kwargs": {"warmup_steps": 2}})
    assert paper.extra["train_phase"] == "one student at a time (agent 'reinforce-paper' learns over one student at a time (it has no learn_over))"
    paired = gym.make(LITE, **{**env_kwargs, "reward": "dev_loss_paired", "episode_steps": STEPS})
    result = train_student("gold-router", **{**kwargs, "built_env": paired})
    assert "the vector env does not support" in result.extra["train_phase"]
    assert "reward='dev_loss_paired'" in result.extra["train_phase"]
