"""Agents on a synthetic pool in which teacher 2 of 3 is confidently wrong: the learners must learn to drop it.

The data: 16-d embeddings around one centre per class; the train labels are noisy (30% redrawn at random), the dev
labels clean; teachers 0 and 1 put +4 on the true class, teacher 2 puts +6 on the next class. So the good teachers
are worth more than the gold labels and the bad one is worth less than nothing. The reward is ``dev_loss_delta``
measured after every update (``reward_interval=1``): the decrease of the student's dev CE, a real measure of the
update each action shaped.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from agent_data import BATCH, LABELS, TEACHERS, WRONG, assert_same, make_env, noisy_teacher_data

import agents
import kd_gym  # noqa: F401 - registers the envs
from agents.sb3 import InstanceVecEnv, load_hyperparams
from agents.state import PerTeacherState
from kd_gym.data import KDData

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> KDData:
    return noisy_teacher_data()


def mean_weights(agent: agents.Agent, env: gym.Env, steps: int = 5) -> np.ndarray:
    """(K,) mean deterministic weight per teacher over ``steps`` fresh batches."""
    obs, _ = env.reset(seed=1234)
    weights = []
    for _ in range(steps):
        weights.append(agent.predict(obs, deterministic=True).mean(0))
        obs, *_ = env.step(np.ones((BATCH, TEACHERS), np.float32))
    return np.mean(weights, axis=0)


# -- learning to drop the wrong teacher, over seeds nobody picked
def learned_to_drop(weights: np.ndarray) -> bool:
    return bool(weights[WRONG] < 0.5 * weights[:WRONG].mean() and weights[:WRONG].min() > 0.5)


def test_reinforce_learns_to_drop_the_wrong_teacher(data):
    # The paper's per-teacher logistic selector, with per-action advantages from the env's credit (docs/agents.md
    # has the 10-seed tables of every variant: this one learned on 10 of 10 seeds with margins of 0.4 and more).
    passed = []
    for seed in range(5):
        env = make_env(data, credit=True)
        agent = agents.make("reinforce-paper", env, seed=seed, learning_rate=0.05, advantage="credit").learn(1500)
        weights = mean_weights(agent, env)
        passed.append(learned_to_drop(weights))
        assert {"policy_loss", "entropy", "keep_probability[teacher2]"} <= set(agent.metrics)
    assert sum(passed) >= 4, passed


def test_ppo_learns_to_drop_the_wrong_teacher(data):
    # PPO on the per-(instance, teacher) view, with the paired reward (dev loss after the agent's update minus after
    # an equal-weights update from the same state and batch).
    passed = []
    for seed in range(5):
        env = make_env(data, reward="dev_loss_paired")
        agent = agents.make("ppo", env, seed=seed, gamma=0.0, learning_rate=1e-3).learn(4000)
        weights = mean_weights(agent, env)
        passed.append(bool(weights[WRONG] < 0.5 * weights[:WRONG].mean() and weights[:WRONG].mean() - weights[WRONG] > 0.25))
        assert "policy_gradient_loss" in agent.metrics
    assert sum(passed) >= 4, passed


def test_confidence_downweights_the_wrong_teacher_from_the_start(data):
    env = make_env(data)
    weights = mean_weights(agents.make("confidence", env), env)
    assert weights[WRONG] < 0.5 * weights[:WRONG].mean(), weights


# -- every agent acts inside the action space
def _agent_names() -> list[str]:
    return [name.replace("<k>", "1") for name in agents.available_agents()]


@pytest.mark.parametrize("action_type", ["weights", "select"])
@pytest.mark.parametrize("name", _agent_names())
def test_actions_are_inside_the_action_space(data, name, action_type):
    if action_type == "select" and name in ("sac", "td3"):
        pytest.skip("continuous-action agents: see test_continuous_agents_refuse_select_mode")
    # the oracle needs a scenario that knows how the pool was made
    env = make_env(data, action_type=action_type, **({"scenario": "noisy-teacher"} if name == "oracle" else {}))
    agent = agents.make(name, env, seed=0)
    obs, _ = env.reset(seed=0)
    for deterministic in (False, True):
        action = agent.predict(obs, deterministic=deterministic)
        assert action.shape == env.action_space.shape
        assert env.action_space.contains(action), (name, action_type, deterministic, action)
        obs, *_ = env.step(action)


@pytest.mark.parametrize("name", ["sac", "td3"])
def test_continuous_agents_refuse_select_mode(data, name):
    with pytest.raises(ValueError, match="action_type='select'"):
        agents.make(name, make_env(data, action_type="select"))


# -- learn() runs, counts env steps exactly and records losses
@pytest.mark.parametrize(("name", "kwargs", "steps"), [
    ("a2c", {}, 30),
    ("sac", {"learning_starts": 5}, 12),
    ("td3", {"learning_starts": 5}, 12),
    ("ppo", {"n_steps": 8, "minibatch_size": 64}, 20),  # 20 is not a multiple of n_steps: stopped by the callback
    ("reinforce-paper", {"warmup_steps": 2, "update_interval": 5}, 20),
    ("gold-router", {"warmup_steps": 2}, 20),
])
def test_learn_runs_exactly_total_steps(data, name, kwargs, steps):
    env = make_env(data)
    seen = []
    agent = agents.make(name, env, seed=0, **kwargs).learn(steps, callback=lambda local: seen.append(local["reward"]))
    assert env.unwrapped.student_steps == steps == len(seen)
    assert agent.metrics and all(np.isfinite(v) for v in agent.metrics.values()), agent.metrics


def test_callback_returning_false_stops_learning(data):
    env = make_env(data)
    agents.make("ppo", env, seed=0, n_steps=8, minibatch_size=64).learn(50, callback=lambda local: local["step"] < 4)
    assert env.unwrapped.student_steps == 5


# -- save and load
@pytest.mark.parametrize("name", ["reinforce-paper", "gold-router", "ppo", "sac"])
def test_save_load_gives_identical_deterministic_actions(data, name, tmp_path):
    env = make_env(data)
    kwargs = {"learning_starts": 2} if name == "sac" else {}
    agent = agents.make(name, env, seed=3, **kwargs).learn(12)
    agent.save(tmp_path / name)
    loaded = agents.load(tmp_path / name, make_env(data))
    assert type(loaded) is type(agent)
    obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True), loaded.predict(obs, deterministic=True))


def test_ppo_observation_normalisation_is_saved_frozen_in_predict_and_restored(data, tmp_path):
    env = make_env(data)
    agent = agents.make("ppo", env, seed=3, normalize_obs=True, normalize_reward=True, n_steps=8,
                        minibatch_size=64).learn(16)
    assert agent.normalizer is not None and agent.model.get_vec_normalize_env() is agent.normalizer
    stats = agent.normalizer.obs_rms.mean.copy(), agent.normalizer.obs_rms.count
    obs, _ = env.reset(seed=7)
    action = agent.predict(obs, deterministic=True)
    assert np.array_equal(agent.normalizer.obs_rms.mean, stats[0]) and agent.normalizer.obs_rms.count == stats[1]
    agent.save(tmp_path / "ppo")
    loaded = agents.load(tmp_path / "ppo", make_env(data))
    np.testing.assert_array_equal(loaded.normalizer.obs_rms.mean, stats[0])
    np.testing.assert_array_equal(loaded.normalizer.ret_rms.var, agent.normalizer.ret_rms.var)
    np.testing.assert_array_equal(action, loaded.predict(obs, deterministic=True))


# -- the per-instance view and the hyperparameter files
@pytest.mark.parametrize("view", ["instance", "teacher", "router"])
def test_instance_vec_env_broadcasts_reward_and_resets_on_done(data, view):
    env = make_env(data, episode_steps=2)
    vec_env = InstanceVecEnv(env, view, instance_reward="env")
    obs = vec_env.reset()
    s, p = env.observation_space["instance_features"].shape[1], env.observation_space["teacher_features"].shape[2]
    if view == "instance":
        assert obs.shape == (BATCH, s + TEACHERS * p + TEACHERS * LABELS + LABELS)
        actions = np.zeros((BATCH, TEACHERS), np.float32)  # -1..1 -> weight 0.5
    elif view == "router":  # the label-free instance features (all but student_ce and labelled), log-probabilities
        assert obs.shape == (BATCH, s - 2 + TEACHERS * LABELS)
        actions = np.zeros((BATCH, TEACHERS), np.float32)
    else:  # one row per (instance, teacher): its state and a one-hot teacher id
        assert obs.shape == (BATCH * TEACHERS, PerTeacherState(env.observation_space, 2.0).size + TEACHERS)
        np.testing.assert_array_equal(obs[:TEACHERS, -TEACHERS:], np.eye(TEACHERS))
        actions = np.zeros((BATCH * TEACHERS, 1), np.float32)
        actions[TEACHERS - 1 :: TEACHERS] = 1.0  # the last teacher of every instance -> weight 1
    assert vec_env.observation_space.contains(obs[0])
    obs, rewards, dones, infos = vec_env.step(actions)
    expected = np.full((BATCH, TEACHERS), 0.5, np.float32)
    if view == "teacher":
        expected[:, -1] = 1.0
    np.testing.assert_allclose(vec_env.last_step["action"], expected)
    assert not dones.any() and np.all(rewards == rewards[0]) and len(rewards) == vec_env.num_envs
    obs, rewards, dones, infos = vec_env.step(actions)
    assert dones.all() and all("terminal_observation" in info for info in infos)
    assert env.unwrapped.student_steps == 0  # the real env was reset: a fresh student


def test_the_gold_instance_reward_scores_the_chosen_mixture_on_labelled_instances(data):
    # instance_reward='gold': log(sum_k w_k p_k(y) / sum_k w_k) - log(mean_k p_k(y)) on labelled instances, 0 on
    # the transfer rows, an empty selection scored as equal weights; every sub-env of an instance gets its reward
    env = make_env(data, gold_labels=1024)  # half the rows: a batch of 16 holds both kinds
    for view in ("router", "teacher"):
        vec_env = InstanceVecEnv(env, view, instance_reward="gold")
        vec_env.seed(0)
        vec_env.reset()
        obs = vec_env.env_obs
        per_instance = vec_env.num_envs // BATCH  # sub-envs of one instance: K (teacher view) or 1
        shape = (vec_env.num_envs, *vec_env.action_space.shape)
        actions = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        actions[:per_instance] = -1.0  # instance 0: every weight 0
        _, rewards, _, _ = vec_env.step(actions)
        weights = vec_env.last_step["action"]
        p = np.exp(-obs["teacher_features"][..., env.unwrapped.teacher_feature_names.index("teacher_ce")])
        labelled = obs["instance_features"][:, env.unwrapped.instance_feature_names.index("labelled")] > 0.5
        assert 0 < labelled.sum() < BATCH, "the batch should mix labelled and transfer rows"
        expected = np.log((weights * p).sum(1) / np.maximum(weights.sum(1), 1e-12)) - np.log(p.mean(1))
        expected[0] = 0.0
        expected[~labelled] = 0.0
        np.testing.assert_allclose(rewards, np.repeat(expected, per_instance), rtol=1e-5, atol=1e-6)
        assert np.abs(rewards).max() > 0.01
    with pytest.raises(ValueError, match="instance_reward must be one of"):
        InstanceVecEnv(env, "router", instance_reward="dev")


def test_hyperparameter_files():
    for algo in ("ppo", "a2c", "sac", "td3"):
        lite = load_hyperparams(algo, "kd_gym/TeacherSelectionLite-v0")
        assert lite["policy_kwargs"]["net_arch"] == [64, 64]
        assert load_hyperparams(algo, "kd_gym/TeacherSelection-v0")
        assert load_hyperparams(algo, "unknown-id") == load_hyperparams(algo, None)


def test_config_field_overrides_the_yml(data):
    agent = agents.make("ppo", make_env(data), n_steps=16, learning_rate=1e-3, net_arch="32")
    assert agent.model.n_steps == 16 and agent.model.learning_rate == 1e-3
    assert agent.hyperparams["policy_kwargs"]["net_arch"] == [32]


# -- REINFORCE's gradient on a case small enough to compute by hand
def test_reinforce_policy_gradient_matches_the_hand_computed_one(data):
    agent = agents.make("reinforce-paper", make_env(data), entropy_coef=0.1, advantage="return")
    d = agent.states.size
    with torch.no_grad():
        agent.policy.linear.weight.zero_()
        agent.policy.linear.weight[0, :2] = torch.tensor([0.5, -1.0])
        agent.policy.teacher_bias.copy_(torch.tensor([0.2, 0.0, -0.3]))
    states = torch.zeros(1, 1, TEACHERS, d)  # one step, one instance, three teachers
    states[0, 0, :, 0] = torch.tensor([1.0, 2.0, 0.0])
    states[0, 0, :, 1] = torch.tensor([0.0, 1.0, 1.0])
    taken = torch.tensor([[[1.0, 0.0, 1.0]]])
    advantage = 1.5
    loss, _, _ = agent.policy_loss(states, taken, advantage)
    loss.backward()
    # z_k = w . s_k + b_k; d/dz_k of -A log pi(a_k) = -A (a_k - sigmoid(z_k)) (B = 1, N = 1);
    # d/dz_k of -c * mean_k H(sigmoid(z_k)) = c * z_k sigmoid(z_k) (1 - sigmoid(z_k)) / K.
    z = np.array([0.5 * 1 - 1.0 * 0 + 0.2, 0.5 * 2 - 1.0 * 1 + 0.0, 0.0 - 1.0 * 1 - 0.3])
    p = 1 / (1 + np.exp(-z))
    dz = -advantage * (np.array([1.0, 0.0, 1.0]) - p) + 0.1 * z * p * (1 - p) / TEACHERS
    np.testing.assert_allclose(agent.policy.teacher_bias.grad.numpy(), dz, rtol=1e-5)
    s = states[0, 0].numpy()  # (K, d)
    np.testing.assert_allclose(agent.policy.linear.weight.grad.numpy()[0], dz @ s, rtol=1e-5, atol=1e-7)


# -- checkpoints: learn() continued from a saved state
def _checkpoint(env: gym.Env, agent: agents.Agent, path) -> dict:
    """What a run checkpoint holds of the env and the agent, written to ``path`` and read back (data only)."""
    from agents.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(path, {"env": env.unwrapped.state_dict(), "agent": agent.state_dict(),
                           "training": agent.training_state()})
    return load_checkpoint(path)


def _restore(data: KDData, name: str, kwargs: dict, saved: dict, **env_options) -> tuple[gym.Env, agents.Agent]:
    env = make_env(data, **env_options)
    env.reset(seed=0)  # the wrappers' order check wants one reset; the state below replaces what it drew
    env.unwrapped.load_state_dict(saved["env"])
    agent = agents.make(name, env, **kwargs)
    agent.load_state_dict(saved["agent"])
    agent.load_training_state(saved["training"])
    return env, agent


@pytest.mark.parametrize("stop_after", [14, 20])  # 14: inside a window; 20: an episode ends, its reset to come
@pytest.mark.parametrize(("name", "kwargs"), [
    ("random", {}),
    ("reinforce-paper", {"warmup_steps": 4, "update_interval": 3, "advantage": "return"}),
    ("reinforce-paper", {"warmup_steps": 4, "action_mode": "prob", "anneal_lr": True, "advantage": "return"}),
    ("gold-router", {"warmup_steps": 4, "replay_size": 40}),
])
def test_learn_resumed_from_a_checkpoint_continues_exactly(data, name, kwargs, stop_after, tmp_path):
    steps, options = 30, {"episode_steps": 10, "reward_interval": 3}
    straight_env = make_env(data, **options)
    rewards: list[float] = []
    straight = agents.make(name, straight_env, seed=2, **kwargs).learn(
        steps, callback=lambda local: rewards.append(local["reward"]))

    env = make_env(data, **options)
    first = agents.make(name, env, seed=2, **kwargs).learn(steps, callback=lambda local: local["step"] < stop_after - 1)
    assert first.loop.step == stop_after
    env, resumed = _restore(data, name, {"seed": 2, **kwargs}, _checkpoint(env, first, tmp_path / "c.safetensors"),
                            **options)
    after: list[float] = []
    resumed.learn(steps, callback=lambda local: after.append(local["reward"]), resume=True)
    assert after == rewards[stop_after:]
    assert env.unwrapped.student_steps == straight_env.unwrapped.student_steps == 10
    for key, value in straight_env.unwrapped.student_state_dict().items():
        assert torch.equal(value, env.unwrapped.student_state_dict()[key]), key
    assert_same(straight.state_dict(), resumed.state_dict())
    assert_same(straight.training_state(), resumed.training_state())  # loop, random streams, open window


def test_resuming_past_the_budget_is_an_error(data, tmp_path):
    env = make_env(data)
    agent = agents.make("uniform", env).learn(6)
    env, resumed = _restore(data, "uniform", {}, _checkpoint(env, agent, tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="has done 6 steps, more than total_steps=4"):
        resumed.learn(4, resume=True)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("ppo", {"n_steps": 8, "minibatch_size": 64, "normalize_obs": True, "normalize_reward": True}),
    ("sac", {"learning_starts": 3, "train_freq": 2}),
])
def test_sb3_agents_resume_their_networks_and_counters_without_resetting_the_student(data, name, kwargs, tmp_path):
    env = make_env(data)
    first = agents.make(name, env, seed=0, **kwargs).learn(20, callback=lambda local: local["step"] < 11)
    updates = first.model._n_updates
    assert first.loop.step == 12 and updates > 0
    env, resumed = _restore(data, name, {"seed": 0, **kwargs}, _checkpoint(env, first, tmp_path / "c.safetensors"))
    for key, value in first.model.policy.state_dict().items():
        assert torch.equal(value, resumed.model.policy.state_dict()[key]), key
    if name == "ppo":
        np.testing.assert_array_equal(resumed.normalizer.obs_rms.mean, first.normalizer.obs_rms.mean)
    seen: list[int] = []
    resumed.learn(20, callback=lambda local: seen.append(local["step"]), resume=True)
    assert seen == list(range(12, 20))
    assert env.unwrapped.student_steps == 20  # the student went on from step 12: no reset
    assert resumed.model.num_timesteps == 20 * resumed.vec_env.num_envs and resumed.model._n_updates > updates


def test_a_checkpoint_write_that_dies_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from agents import checkpoint

    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save_checkpoint(path, {"step": 10, "weights": torch.arange(4.0), "rng": {"state": 2**100 + 1}})

    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(checkpoint, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"step": 20, "weights": torch.zeros(4)})
    saved = checkpoint.load_checkpoint(path)
    assert saved["step"] == 10 and saved["rng"] == {"state": 2**100 + 1}
    assert torch.equal(saved["weights"], torch.arange(4.0))


def test_sb3_agents_leave_no_log_folder_behind(env_kwargs, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's default logger would make SB3-<time>
    env = gym.make("kd_gym/TeacherSelectionLite-v0", **{**env_kwargs, "episode_steps": 4})
    agents.make("ppo", env, seed=0, n_steps=2).learn(4)
    assert not list(tmp_path.glob("SB3-*"))


def test_the_gold_routers_replay_is_a_ring_buffer_of_the_last_labelled_instances():
    from agents.gold_router import GoldRouter

    names = ["teacher_agreement", "student_ce", "student_entropy", "length", "labelled"]
    router = GoldRouter(names, ["teacher_ce", "x"], 2, 3, learning_rate=0.1, l2=0.0, entropy_coef=0.0, samples=1,
                        replay_size=5, replay_batch=4, generator=torch.Generator().manual_seed(0))
    kept: list[tuple[float, float]] = []  # (view id, reward) of every labelled instance, in the order seen
    rng, seen = np.random.default_rng(0), 0
    for batch in (3, 4, 8, 2):  # wraps around, and one step holds more labelled rows than the buffer
        labelled = rng.random(batch) < 0.8
        labelled[0] = True
        ce = rng.random((batch, 2)).astype(np.float32)
        obs = {"instance_features": np.zeros((batch, 5), np.float32),
               "teacher_features": np.stack([ce, np.zeros_like(ce)], axis=-1)}
        obs["instance_features"][:, 4] = labelled
        ids = torch.arange(seen, seen + batch, dtype=torch.float32)  # each row's view says which row it is
        seen += batch
        router.remember(obs, ids[:, None].expand(batch, router.size).contiguous())
        kept += [(float(i), float(np.exp(-c[0]))) for i, c, known in zip(ids, ce, labelled) if known]
        last = kept[-5:]
        assert router.replay_count == len(last) and router.replay_cursor == len(kept) % 5
        stored = sorted(zip(router.replay_views[: router.replay_count, 0].tolist(),
                            router.replay_rewards[: router.replay_count, 0].tolist()))
        np.testing.assert_allclose(np.array(stored), np.array(sorted(last)), rtol=1e-6)
        # the slot of each instance is its position in the stream, modulo the size
        for position, (view, _) in enumerate(kept[-5:], start=len(kept) - len(last)):
            assert router.replay_views[position % 5, 0].item() == view
