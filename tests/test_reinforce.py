"""The default reinforce: REINFORCE over a Gaussian distribution of routers, learning from the env's reward (the
student's dev gain) over antithetic pairs of students (agents/reinforce.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from agent_data import BATCH, assert_same, make_env, split_experts_data
from test_routing import routed_weight

import agents

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = {"include_embedding": True, "gold_labels": 64, "episode_steps": 100}
SMALL = {"generations": 15, "population": 8, "rollout_steps": 60, "clusters": 4, "survey_steps": 5}


@pytest.fixture(scope="module")
def data():
    return split_experts_data()


def _vector_env(data, num_envs: int) -> gym.vector.VectorEnv:
    config = {"data": data, "lite_student": "mlp", "batch_size": BATCH, "reward": "dev_delta", "reward_interval": 10,
              "alpha": 0.2, "dev_subset": 256, "device": "cpu", **OPTIONS}
    return gym.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **config)


def test_reinforce_learns_routing_from_the_students_dev_gain_alone(data):
    # split experts: each teacher is right on one cluster of instances and wrong on the other, and only the embedding
    # tells which. The agent sees no gold label (its view drops those columns) and no cluster: its only signal is the
    # env's reward, the dev gain of the students its routers teach. 3 seeds.
    routed = []
    for seed in range(3):
        env = make_env(data, **OPTIONS)
        agent = agents.make("reinforce", env, seed=seed, **SMALL)
        assert routed_weight(agent, env) == pytest.approx(1 / 3)  # equal weights before learning
        agent.learn_over(_vector_env(data, 2), 100)
        assert agent.student_steps_learned == 15 * 8 * 60 == agent.learning_student_steps(100, 2)
        assert agent.metrics["generation"] == 15
        routed.append(routed_weight(agent, env))
    assert sum(w > 0.7 for w in routed) >= 2, routed


def test_the_same_seed_learns_the_same_router_and_a_saved_agent_acts_the_same(data, tmp_path):
    env = make_env(data, **OPTIONS)
    small = {**SMALL, "generations": 3}
    first = agents.make("reinforce", env, seed=4, **small).learn_over(_vector_env(data, 2), 100)
    again = agents.make("reinforce", env, seed=4, **small).learn_over(_vector_env(data, 2), 100)
    assert_same(first.state_dict(), again.state_dict())
    first.save(tmp_path / "reinforce")
    loaded = agents.load(tmp_path / "reinforce", make_env(data, **OPTIONS))
    obs, _ = env.reset(seed=9)
    np.testing.assert_array_equal(first.predict(obs, deterministic=True), loaded.predict(obs, deterministic=True))


def test_antithetic_students_share_their_seed_and_the_update_follows_the_better_side(data):
    agent = agents.make("reinforce", make_env(data, **OPTIONS), seed=0, population=6, learning_rate=0.1)
    agent._fit_features([torch.randn(64, agent.view.size)])
    eps, thetas, seeds = agent._directions()
    assert seeds[0::2] == seeds[1::2] and len(set(seeds)) == 3  # pair members on common random numbers
    torch.testing.assert_close(thetas[0::2] + thetas[1::2], torch.zeros_like(thetas[0::2]))  # mu = 0: +-sigma eps
    # the + side of pair 0 wins, the others tie: one Adam step moves mu along eps_0
    agent._update(eps, np.array([2.0, 1.0, 0.5, 0.5, 0.5, 0.5]))
    step = agent.mu.detach()
    assert float((step * eps[0]).sum()) > 0 and float((step * eps[1]).sum()) == pytest.approx(
        float((torch.sign(eps[0]) * 0.1 * eps[1]).sum()), abs=1e-5)


def test_reinforce_reads_no_gold_label_column(data):
    env = make_env(data, **OPTIONS)
    agent = agents.make("reinforce", env, seed=0, features="projection")
    obs, _ = env.reset(seed=0)
    agent._fit_features([agent.view(obs)])
    with torch.no_grad():
        agent.mu.normal_(0.0, 1.0)
    names = env.unwrapped.instance_feature_names
    changed = {key: value.copy() for key, value in obs.items()}
    for name in ("student_ce", "labelled"):
        changed["instance_features"][:, names.index(name)] += 3.0
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True), agent.predict(changed, deterministic=True))
    changed["instance_features"][:, names.index("length")] += 3.0  # a label-free column does move it
    assert not np.array_equal(agent.predict(obs, deterministic=True), agent.predict(changed, deterministic=True))


def test_learn_one_student_after_another_spends_its_budget_and_trains_a_last_student(data):
    env = make_env(data, **OPTIONS)
    small = {**SMALL, "population": 2, "rollout_steps": 20, "survey_steps": 5}
    agent = agents.make("reinforce", env, seed=1, **small).learn(2 * 20 * 3 + 5 + 30)
    # a survey, then 3 generations of 2 students of 20 steps fit; the 30 steps left train a last student
    assert agent.generation == 3 and agent.student_steps_learned == 155
    assert env.unwrapped.student_steps == 30


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"population": 3}, "population=3 must be even"),
    ({"features": "pca"}, "features='pca' is invalid"),
    ({"survey_steps": 600}, "survey_steps=600 must be below rollout_steps=500"),
    ({"sigma": 0.0}, "sigma=0.0 and learning_rate=0.2 must be > 0"),
])
def test_bad_settings_are_refused_by_name(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        agents.make("reinforce", make_env(data, **OPTIONS), **kwargs)
