"""Routing: on split experts (each teacher right on one cluster of instances and wrong on the other, only the
embedding telling which) a learner must route each instance to its cluster's teacher; the gold-likelihood
router (gold-router), its policy-gradient estimate, its gate's inputs and its checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from agent_data import BATCH, TEACHERS, assert_same, make_env, noisy_teacher_data, split_experts_data

import agents

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return noisy_teacher_data()


def routed_weight(agent: agents.Agent, env: gym.Env, steps: int = 5) -> float:
    """Mean deterministic weight an instance gives the teacher that is right on its cluster, over fresh batches."""
    obs, _ = env.reset(seed=1234)
    right = []
    for _ in range(steps):
        weights = agent.predict(obs, deterministic=True)
        weights = weights / np.maximum(weights.sum(1, keepdims=True), 1e-8)
        cluster = (obs["instance_features"][:, -16:].mean(1) > 0).astype(int)  # the embedding's columns
        right.append(weights[np.arange(len(cluster)), cluster].mean())
        obs, *_ = env.step(np.ones((BATCH, TEACHERS), np.float32))
    return float(np.mean(right))


def test_a_routed_reinforce_learns_which_teacher_each_instance_needs_and_the_shared_unit_cannot():
    # The paper's shared unit adds the same instance term to every teacher's keep logit, so it cannot route by the
    # embedding (only by each teacher's own columns, e.g. its agreement with the student); the routed selector
    # (per-teacher weights on the instance's view) can. 64 gold labels, so teacher_correct does not give it away;
    # per-pair credit; 4 seeds.
    data = split_experts_data()
    routed, shared = [], []
    for seed in range(4):
        env = make_env(data, include_embedding=True, gold_labels=64)
        for kwargs, out in (({"routed": True}, routed), ({"routed": False}, shared)):
            agent = agents.make("reinforce-paper", env, seed=seed, learning_rate=0.05, advantage="credit", **kwargs)
            out.append(routed_weight(agent.learn(600), env))
    assert sum(w > 0.65 for w in routed) >= 3, routed
    assert np.mean(routed) > np.mean(shared) + 0.1, (routed, shared)


def test_reinforce_measures_the_credit_itself_when_the_env_does_not_report_it(data):
    # advantage='credit' without the env option credit=True: the agent calls env.unwrapped.pair_credit() before each
    # step, the quantity info["credit"] reports after it, so it learns exactly what it learns from info["credit"].
    learned = []
    for credit in (True, False):
        agent = agents.make("reinforce-paper", make_env(data, credit=credit), seed=3, advantage="credit", learning_rate=0.05)
        learned.append(agent.learn(60).policy.state_dict())
    for name in learned[0]:
        torch.testing.assert_close(learned[0][name], learned[1][name], rtol=0, atol=0)
    start = agents.make("reinforce-paper", make_env(data), seed=3, advantage="credit").policy.state_dict()
    assert not torch.equal(start["teacher_bias"], learned[0]["teacher_bias"])  # it did learn something


def test_a_routed_reinforce_learns_routing_from_replayed_gold_labels():
    # advantage='gold' with gold_replay: the 64 labelled instances (one batch in 8 holds one) are replayed, each
    # update fitting the expected gain sum_k p_k delta_k on 64 of them; the router learns which teacher is right on
    # which cluster of the embedding and routes the transfer rows by it. gold_signal='best' (only the instance's
    # best teacher is worth keeping); with 'ce' every teacher better than the instance's mean is kept (about 0.6 of
    # the weight on the right teacher here). 4 seeds.
    data = split_experts_data()
    routed = []
    for seed in range(4):
        env = make_env(data, include_embedding=True, gold_labels=64)
        agent = agents.make("reinforce-paper", env, seed=seed, learning_rate=0.05, routed=True, advantage="gold",
                            gold_replay=256, gold_signal="best")
        agent.learn(400)
        assert 0 < len(agent.replay) <= 256 and agent.metrics["replay"] == len(agent.replay)
        routed.append(routed_weight(agent, env))
    assert sum(w > 0.65 for w in routed) >= 3, routed


def test_gold_replay_needs_the_gold_advantage(data):
    with pytest.raises(ValueError, match="gold_replay=16 replays labelled instances for advantage='gold', not"):
        agents.make("reinforce-paper", make_env(data), gold_replay=16, advantage="return")
    with pytest.raises(ValueError, match="gold_signal='mean' is invalid"):
        agents.make("reinforce-paper", make_env(data), advantage="gold", gold_signal="mean")


# -- the gold-likelihood router (gold-router, agents/gold_router.py)
def _router_agent(env: gym.Env, seed: int = 0, **kwargs) -> agents.Agent:
    return agents.make("gold-router", env, seed=seed, **kwargs)


def test_the_mixture_routers_reinforce_estimate_is_the_gradient_of_the_log_likelihood(data):
    # E_{k ~ pi}[(r_k / E_pi[r] - 1) grad log pi_k] = grad log sum_k pi_k r_k: with many arms drawn per instance the
    # estimate agrees with autograd on the exact mixture log-likelihood (a sampler that drew the wrong arms, or an
    # advantage without the 1 / E_pi[r], would not).
    agent = _router_agent(make_env(data))
    router = agent.router
    torch.manual_seed(0)
    with torch.no_grad():  # a gate that is not uniform, so the check is not at a symmetric point
        router.gate.weight.normal_(0.0, 0.3)
    views = torch.randn(8, router.size)
    rewards = torch.rand(8, TEACHERS)
    router.samples, router.l2, router.entropy_coef = 20_000, 0.0, 0.0
    loss, _ = router.loss(views, rewards)
    estimate = torch.autograd.grad(loss, router.gate.weight)[0]
    exact_loss = -torch.log((torch.softmax(router.logits(views), -1) * rewards).sum(-1)).mean()
    exact = torch.autograd.grad(exact_loss, router.gate.weight)[0]
    assert torch.linalg.vector_norm(exact) > 0.05
    torch.testing.assert_close(estimate, exact, atol=0.02 * float(exact.abs().max()), rtol=0.05)


def test_the_mixture_router_reads_no_gold_label_column(data):
    # student_ce uses the gold label and `labelled` says whether it is there: a gate fitted on labelled rows would
    # read them as constants and misread the transfer rows, so the router never sees them
    env = make_env(data, gold_labels=300)
    agent = _router_agent(env)
    with torch.no_grad():
        agent.router.gate.weight.normal_(0.0, 1.0)
    obs, _ = env.reset(seed=0)
    names = env.unwrapped.instance_feature_names
    changed = {key: value.copy() for key, value in obs.items()}
    for name in ("student_ce", "labelled"):
        changed["instance_features"][:, names.index(name)] += 3.0
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True), agent.predict(changed, deterministic=True))
    changed["instance_features"][:, names.index("length")] += 3.0  # a label-free column does move it
    assert not np.array_equal(agent.predict(obs, deterministic=True), agent.predict(changed, deterministic=True))


def test_the_mixture_router_learns_routing_from_few_gold_labels():
    # split experts, 64 gold labels among 2,048 rows: the router replays the labelled instances and routes the
    # transfer rows by the embedding; 4 seeds. Its sampled actions pick one teacher per instance.
    data = split_experts_data()
    routed = []
    for seed in range(4):
        env = make_env(data, include_embedding=True, gold_labels=64)
        agent = _router_agent(env, seed=seed, learning_rate=0.01).learn(400)
        assert 0 < agent.metrics["replay"] <= agent.router.replay_count <= 4096 and agent.metrics["updates"] > 0
        action = agent.predict(env.reset(seed=5)[0])
        assert set(np.unique(action)) <= {0.0, 1.0} and (action.sum(1) == 1).all()
        routed.append(routed_weight(agent, env))
    assert sum(w > 0.8 for w in routed) >= 3, routed


def test_the_mixture_router_saves_loads_and_resumes(data, tmp_path):
    env = make_env(data, gold_labels=300)
    agent = _router_agent(env, seed=2).learn(30)
    agent.save(tmp_path / "router")
    loaded = agents.load(tmp_path / "router", make_env(data, gold_labels=300))
    obs, _ = env.reset(seed=9)
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True), loaded.predict(obs, deterministic=True))
    with pytest.raises(ValueError, match="router_l2=-1.0"):
        _router_agent(env, router_l2=-1.0)


def test_ppo_on_the_router_view_learns_routing_from_the_gold_instance_reward():
    # PPO's lite default (agents/hyperparams/ppo.yml: view='router', instance_reward='gold', gamma 0): split experts,
    # 64 gold labels among 2,048 rows; each labelled instance is rewarded for its own mixture's gold likelihood and
    # the policy routes the transfer rows by the embedding; 4 seeds
    data = split_experts_data()
    routed = []
    for seed in range(4):
        env = make_env(data, include_embedding=True, gold_labels=64)
        agent = agents.make("ppo", env, seed=seed, learning_rate=1e-3)
        assert (agent.view, agent.instance_reward, agent.model.gamma) == ("router", "gold", 0.0)
        routed.append(routed_weight(agent.learn(400), env))
    assert sum(w > 0.65 for w in routed) >= 3, routed


def _vector_env(data, num_envs: int, **options) -> gym.vector.VectorEnv:
    config = {"data": data, "lite_student": "mlp", "batch_size": BATCH, "reward": "dev_loss_delta",
              "reward_interval": 1, "alpha": 0.2, "gold_labels": None, "episode_steps": 100, "dev_subset": 256,
              "device": "cpu", **options}
    return gym.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **config)


def test_the_mixture_router_learns_routing_over_several_students_at_once():
    # learn_over: 4 students of a vector env, each vector step one batched update of all 4 and one router step;
    # split experts, 64 gold labels, 4 seeds; the same seed twice gives the same router
    data = split_experts_data()
    routed = []
    for seed in range(4):
        options = {"include_embedding": True, "gold_labels": 64, "episode_steps": 100}
        env = make_env(data, **options)
        agent = _router_agent(env, seed=seed, learning_rate=0.01).learn_over(_vector_env(data, 4, **options), 100)
        # an update every router_update_interval = 4 vector steps after the warm-up, on 4 * 4 * 64 replayed rows
        assert agent.metrics["updates"] == (100 - agent.config.warmup_steps) // 4
        assert agent.router.replay_batch == 4 * 64
        routed.append(routed_weight(agent, env))
        if seed == 0:
            again = _router_agent(env, seed=0, learning_rate=0.01).learn_over(_vector_env(data, 4, **options), 100)
            assert_same(again.state_dict(), agent.state_dict())
    assert sum(w > 0.8 for w in routed) >= 3, routed


def test_the_keep_drop_learner_does_not_learn_over_several_students(data):
    env = make_env(data)
    with pytest.raises(NotImplementedError, match="'reinforce-paper' learns over one student at a time"):
        agents.make("reinforce-paper", env).learn_over(_vector_env(data, 2), 10)
    with pytest.raises(NotImplementedError, match="one student at a time"):
        agents.make("uniform", env).learn_over(_vector_env(data, 2), 10)


def test_ppo_learns_over_several_students_at_once():
    # SB3Agent.learn_over: PPO's model steps the router view over a vector env of 4 students (4 * B sub-envs) and
    # hands its networks back (a rollout of n_steps=10 vector steps holds 4 times the instances: 40 policy updates
    # in 400 vector steps); the same seed twice gives the same policy; a student whose episode ends mid-learning is
    # reset at once
    data = split_experts_data()
    routed = []
    for seed in range(3):
        options = {"include_embedding": True, "gold_labels": 64, "episode_steps": 60}
        env = make_env(data, **options)
        agent = agents.make("ppo", env, seed=seed, learning_rate=1e-3)
        before = agent.model.num_timesteps
        agent.learn_over(_vector_env(data, 4, **options), 400)
        assert agent.model.num_timesteps - before == 400 * 4 * BATCH
        routed.append(routed_weight(agent, env))
        if seed == 0:
            again = agents.make("ppo", env, seed=0, learning_rate=1e-3).learn_over(_vector_env(data, 4, **options), 400)
            assert_same(again.model.policy.state_dict(), agent.model.policy.state_dict())
            assert_same(again.normalizer.obs_rms.mean, agent.normalizer.obs_rms.mean)
    assert sum(w > 0.65 for w in routed) >= 2, routed
