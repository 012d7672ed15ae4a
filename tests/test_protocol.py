"""The train-eval protocol: the agent learns over several students, its frozen policy trains fresh evaluation
students on unseen seeds, and their mean is the result."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

import agents
from agents.experiments.protocol import EVAL_SEED_BASE, check_protocol, eval_seeds, evaluate_policy
from agents.experiments.run import TrainingMonitor, train_student
from kd_gym.cli import main
from tests.test_cli import tiny_flags

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
    result = train_student("reinforce", steps=STEPS, seed=0, built_env=env, progress=False, protocol="train-eval",
                           train_students=3, eval_students=2, agent_kwargs={"update_interval": 2})
    assert result.extra["train_student_steps"] == 3 * STEPS
    # Evaluation changes nothing the agent has learned.
    agent = agents.make("reinforce", env, seed=0, update_interval=2)
    agent.learn(2 * STEPS)
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    monitors = [TrainingMonitor(env, 2) for _ in range(2)]
    scores = evaluate_policy(agent, monitors, STEPS, eval_seeds(0, 2))
    assert [s["seed"] for s in scores] == eval_seeds(0, 2)
    for key, value in agent.policy.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bench_runs_the_protocol_and_records_it(tiny_env_kwargs, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--agents", "uniform,reinforce", "--seeds", "0", "--steps", "4", "--out", str(out), "--no-oracle",
            *tiny_flags(tiny_env_kwargs)]
    assert main([*args, "--protocol", "train-eval", "--train-students", "2", "--eval-students", "2"]) == 0
    frame = pd.read_csv(out / "results.csv").set_index("agent")
    assert frame.loc["reinforce", "train_student_steps"] == 8 and frame.loc["uniform", "train_student_steps"] == 0
    assert set(frame["protocol"]) == {"train-eval"}
    report = (out / "results.md").read_text()
    assert "train-eval protocol (2 training students, 2 evaluation students per seed)" in report
    rows: dict[str, str] = {}
    for line in report.splitlines():  # the first table's rows
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert "student steps to learn |" in rows["agent"]  # the training cost beside the result
    assert rows["reinforce"].endswith(" 8 |") and rows["uniform"].endswith(" 0 |")
    # The online cells of the same agents are other cells (their config hash differs), so both are kept.
    assert main(args) == 0
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.parametrize("bad, message", [
    (("offline", 1, 1), "protocol='offline' is not one of ['online', 'train-eval']"),
    (("train-eval", 0, 1), "train_students=0 is invalid"),
    (("train-eval", 1, 1.5), "eval_students=1.5 is invalid"),
])
def test_bad_protocol_values_name_the_value(bad, message):
    with pytest.raises(ValueError) as error:
        check_protocol(*bad)
    assert message in str(error.value)
