"""The flat ids (kd_gym.flat) work with RL code written for flat spaces: SB3's check_env, a CleanRL-style PPO over
gymnasium's SyncVectorEnv, and RL Zoo's train with agents/hyperparams/rl_zoo/ppo.yml (docs/outside-clients.md)."""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import B, C, K, P, instance_size

import kd_gym
from kd_gym.flat import observation_layout

FLAT, LITE_FLAT = kd_gym.FLAT_ENV_IDS
RL_ZOO_PPO = Path(__file__).resolve().parents[1] / "agents" / "hyperparams" / "rl_zoo" / "ppo.yml"
S_LITE = instance_size("kd_gym/TeacherSelectionLite-v0")  # the lite env appends the embedding


def flat_obs_size(s: int) -> int:
    return B * s + B * C + B * K * P + B * K * C  # instance_features, student_logits, teacher_*


FLAT_OBS_SIZE = flat_obs_size(S_LITE)  # the lite flat id's


def test_flat_ids_are_registered_next_to_the_dict_ids() -> None:
    for flat_id, dict_id, student in zip(kd_gym.FLAT_ENV_IDS, kd_gym.ENV_IDS, ("full", "lite")):
        spec = gym.spec(flat_id)
        assert spec.entry_point == "kd_gym.flat:make_flat_env" and spec.kwargs == {"student": student}
        assert gym.spec(dict_id).kwargs == {"student": student}


@pytest.mark.parametrize(("env_id", "action_type"), [(LITE_FLAT, "weights"), (LITE_FLAT, "select"),
                                                     (FLAT, "weights")])
def test_sb3_check_env_passes_on_flat_ids_with_warnings_as_errors(env_id, action_type, env_kwargs) -> None:
    from stable_baselines3.common.env_checker import check_env

    env = gym.make(env_id, **env_kwargs, action_type=action_type)
    size = flat_obs_size(instance_size(env_id))
    assert env.observation_space == gym.spaces.Box(-50.0, 50.0, (size,), np.float32)
    expected_action = (gym.spaces.Box(-1.0, 1.0, (B * K,), np.float32) if action_type == "weights"
                       else gym.spaces.MultiBinary(B * K))
    assert env.action_space == expected_action
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3's advice (unconventional shape, unnormalised Box) is a warning
        check_env(env)


def test_flat_view_is_the_dict_env_flattened_and_actions_map_affinely_to_weights(env_kwargs) -> None:
    flat_env = gym.make(LITE_FLAT, **env_kwargs)
    dict_env = gym.make("kd_gym/TeacherSelectionLite-v0", **env_kwargs)
    flat_obs, _ = flat_env.reset(seed=3)
    dict_obs, _ = dict_env.reset(seed=3)
    layout = observation_layout(dict_env.observation_space)
    assert list(layout) == ["instance_features", "student_logits", "teacher_features", "teacher_logits"]
    assert [shape for _, shape in layout.values()] == [(B, S_LITE), (B, C), (B, K, P), (B, K, C)]
    for name, (part, shape) in layout.items():
        np.testing.assert_array_equal(flat_obs[part].reshape(shape), dict_obs[name], err_msg=name)

    weights = np.random.default_rng(0).random((B, K)).astype(np.float32)
    action = 2.0 * weights.ravel() - 1.0  # the documented map, weight = (action + 1) / 2
    for _ in range(3):  # the same student updates (up to float32 rounding of the map), rewards, observations
        flat_obs, flat_reward, _, _, flat_info = flat_env.step(action)
        dict_obs, dict_reward, _, _, dict_info = dict_env.step(weights)
        assert flat_reward == pytest.approx(dict_reward, abs=1e-6)
        assert flat_info["loss"] == pytest.approx(dict_info["loss"], rel=1e-5)
        np.testing.assert_allclose(flat_info["weights"], dict_info["weights"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat_obs[layout["teacher_features"][0]], dict_obs["teacher_features"].ravel(),
                                   rtol=1e-5, atol=1e-5)

    # -1 -> weight 0, +1 -> weight 1: only teacher 0 counts on every instance; 0 everywhere -> equal weights
    one_hot = np.full((B, K), -1.0, np.float32)
    one_hot[:, 0] = 1.0
    *_, info = flat_env.step(one_hot.ravel())
    np.testing.assert_allclose(info["weights"], np.eye(K)[np.zeros(B, int)])
    *_, info = flat_env.step(np.zeros(B * K, np.float32))
    np.testing.assert_allclose(info["weights"], np.full((B, K), 1 / K), rtol=1e-6)


def test_flat_action_round_trips_and_a_wrong_size_is_an_error_that_names_b_times_k(env_kwargs) -> None:
    from kd_gym.flat import FlatActions

    env = gym.make(LITE_FLAT, **env_kwargs)
    wrapper = env
    while not isinstance(wrapper, FlatActions):
        wrapper = wrapper.env
    weights = np.random.default_rng(1).random((B, K)).astype(np.float32)
    np.testing.assert_allclose(wrapper.action(wrapper.to_action(weights)), weights, rtol=1e-6)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"expected \({B * K},\) = B \* K for \(B, K\) = \({B}, {K}\)"):
        env.step(np.zeros(B * K + 1, np.float32))


def test_every_env_option_passes_through_the_flat_id(env_kwargs) -> None:
    env = gym.make(LITE_FLAT, **{**env_kwargs, "batch_size": 4, "include_embedding": True, "episode_steps": 2})
    base = env.unwrapped
    assert base.config.batch_size == 4 and base.config.include_embedding and base.config.episode_steps == 2
    assert env.action_space.shape == (4 * K,)
    assert env.observation_space.shape == (4 * len(base.instance_feature_names) + 4 * C + 4 * K * (P + C),)
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step(env.action_space.sample())
    assert not truncated and env.step(env.action_space.sample())[3]  # episode_steps=2 ends at the second step
    with pytest.raises(TypeError, match="unknown option.*'batchsize'"):
        gym.make(LITE_FLAT, **env_kwargs, batchsize=4)


def test_make_vec_sync_steps_flat_envs(env_kwargs) -> None:
    envs = gym.make_vec(LITE_FLAT, num_envs=2, vectorization_mode="sync", **env_kwargs)
    assert envs.single_observation_space.shape == (FLAT_OBS_SIZE,) and envs.action_space.shape == (2, B * K)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, FLAT_OBS_SIZE) and obs.dtype == np.float32
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (2, FLAT_OBS_SIZE) and reward.shape == (2,) and info["weights"].shape == (2, B, K)
    envs.close()


# ------------------------------------------------------------------------------------------------ CleanRL-style PPO


def make_cleanrl_env(env_id: str, env_kwargs: dict, gamma: float):
    """CleanRL's ``make_env`` of ppo_continuous_action.py (with gymnasium 1.x's TransformObservation signature)."""

    def thunk() -> gym.Env:
        env = gym.make(env_id, **env_kwargs)
        env = gym.wrappers.FlattenObservation(env)  # a no-op on the flat ids; CleanRL applies it for dm_control
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))
        return env

    return thunk


def layer_init(layer: torch.nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> torch.nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class CleanRLAgent(torch.nn.Module):
    """CleanRL's ``Agent``: a tanh MLP critic and a Gaussian actor with a state-independent log std."""

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        super().__init__()
        n_obs, n_act = int(np.prod(envs.single_observation_space.shape)), int(np.prod(envs.single_action_space.shape))
        mlp = lambda out, std: torch.nn.Sequential(  # noqa: E731
            layer_init(torch.nn.Linear(n_obs, 64)), torch.nn.Tanh(), layer_init(torch.nn.Linear(64, 64)),
            torch.nn.Tanh(), layer_init(torch.nn.Linear(64, out), std=std))
        self.critic, self.actor_mean = mlp(1, 1.0), mlp(n_act, 0.01)
        self.actor_logstd = torch.nn.Parameter(torch.zeros(1, n_act))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        action_mean = self.actor_mean(x)
        probs = torch.distributions.Normal(action_mean, self.actor_logstd.expand_as(action_mean).exp())
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


def test_cleanrl_style_ppo_runs_on_a_sync_vector_env_of_the_flat_id(env_kwargs) -> None:
    num_envs, num_steps, iterations, num_minibatches, update_epochs = 2, 36, 4, 4, 2
    gamma, gae_lambda, clip_coef, ent_coef, vf_coef, max_grad_norm = 0.99, 0.95, 0.2, 0.0, 0.5, 0.5
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // num_minibatches
    torch.manual_seed(0)
    np.random.seed(0)

    envs = gym.vector.SyncVectorEnv([make_cleanrl_env(LITE_FLAT, env_kwargs, gamma) for _ in range(num_envs)])
    assert isinstance(envs.single_action_space, gym.spaces.Box), "only continuous action space is supported"
    agent = CleanRLAgent(envs)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
    obs = torch.zeros((num_steps, num_envs) + envs.single_observation_space.shape)
    actions = torch.zeros((num_steps, num_envs) + envs.single_action_space.shape)
    logprobs, rewards, dones, values = (torch.zeros((num_steps, num_envs)) for _ in range(4))

    next_obs, _ = envs.reset(seed=1)
    next_obs, next_done = torch.Tensor(next_obs), torch.zeros(num_envs)
    episodes, losses = [], []
    for _ in range(iterations):
        for step in range(num_steps):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs, next_done = torch.Tensor(next_obs), torch.Tensor(np.logical_or(terminations, truncations))
            if "episode" in infos:  # gymnasium 1.x: stats of the sub-envs whose episode just ended, masked
                for i in np.flatnonzero(infos["_episode"]):
                    episodes.append((float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])))

        with torch.no_grad():  # GAE, bootstrapped from the value of the last observation
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages, lastgaelam = torch.zeros_like(rewards), 0
            for t in reversed(range(num_steps)):
                nextnonterminal = 1.0 - (next_done if t == num_steps - 1 else dones[t + 1])
                nextvalues = next_value if t == num_steps - 1 else values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values

        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_logprobs, b_advantages, b_returns, b_values = (x.reshape(-1) for x in (logprobs, advantages, returns, values))
        b_inds = np.arange(batch_size)
        for _ in range(update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb = b_inds[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                approx_kl = ((ratio - 1) - logratio).mean()
                mb_adv = (b_advantages[mb] - b_advantages[mb].mean()) / (b_advantages[mb].std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
                newvalue = newvalue.view(-1)
                v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -clip_coef, clip_coef)
                v_loss = 0.5 * torch.max((newvalue - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
                loss = pg_loss - ent_coef * entropy.mean() + v_loss * vf_coef
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                optimizer.step()
                losses.append([pg_loss.item(), v_loss.item(), entropy.mean().item(), approx_kl.item()])
    envs.close()

    total_steps = iterations * num_steps * num_envs  # 288 env steps, 12-step episodes
    assert np.isfinite(losses).all() and len(losses) == iterations * update_epochs * num_minibatches
    assert np.array(losses)[:, 1].max() > 0  # the critic had something to fit: rewards were not all zero
    episode_steps = env_kwargs["episode_steps"]
    # next-step autoreset: each episode end costs one extra (reset) step of its sub-env
    assert len(episodes) == num_envs * (iterations * num_steps // (episode_steps + 1)), (len(episodes), total_steps)
    assert all(np.isfinite(r) and length == episode_steps for r, length in episodes)
    assert any(r != 0.0 for r, _ in episodes)


# ------------------------------------------------------------------------------------------------ RL Zoo


def _zoo_experiment(env_id: str, tmp_path: Path, **kwargs):
    from rl_zoo3.exp_manager import ExperimentManager

    return ExperimentManager(argparse.Namespace(), "ppo", env_id, str(tmp_path / "logs"), config=str(RL_ZOO_PPO),
                             **kwargs)


@pytest.mark.parametrize("env_id", kd_gym.FLAT_ENV_IDS)
def test_rl_zoo_reads_the_ppo_file_into_valid_ppo_keywords(env_id, tmp_path) -> None:
    pytest.importorskip("rl_zoo3")
    from stable_baselines3 import PPO

    experiment = _zoo_experiment(env_id, tmp_path)
    hyperparams, saved = experiment.read_hyperparameters()
    assert saved["policy"] == "MlpPolicy" and saved["n_timesteps"] > 0
    ppo_kwargs, *_ = experiment._preprocess_hyperparams(hyperparams)
    assert experiment.normalize and experiment.normalize_kwargs == {"norm_obs": True, "norm_reward": True,
                                                                    "gamma": saved["gamma"]}
    assert experiment.n_timesteps == saved["n_timesteps"] and experiment.n_envs >= 1
    accepted = set(inspect.signature(PPO.__init__).parameters)
    assert set(ppo_kwargs) <= accepted, sorted(set(ppo_kwargs) - accepted)
    assert ppo_kwargs["batch_size"] <= ppo_kwargs["n_steps"] * experiment.n_envs


def test_rl_zoo_train_runs_ppo_on_the_tiny_flat_lite_env(env_kwargs, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("rl_zoo3")
    from rl_zoo3.train import train
    from stable_baselines3 import PPO

    env_args = [f"{key}:{value!r}" for key, value in env_kwargs.items()]  # RL Zoo evaluates each value
    monkeypatch.setattr(sys, "argv", [
        "rl_zoo3.train", "--algo", "ppo", "--env", LITE_FLAT, "--gym-packages", "kd_gym", "-conf", str(RL_ZOO_PPO),
        "-n", "48", "--seed", "0", "--eval-freq", "-1", "-f", str(tmp_path / "logs"), "--env-kwargs", *env_args,
        "-params", "n_envs:1", "n_steps:24", "batch_size:24", "n_epochs:1"])
    train()
    out = capsys.readouterr().out
    assert "Loading hyperparameters from: " + str(RL_ZOO_PPO) in out
    run = tmp_path / "logs" / "ppo" / "kd_gym-TeacherSelectionLiteFlat-v0_1"
    model = PPO.load(run / "kd_gym-TeacherSelectionLiteFlat-v0.zip", device="cpu")
    assert model.num_timesteps == 48 and model.observation_space.shape == (FLAT_OBS_SIZE,)
    assert model.action_space == gym.spaces.Box(-1.0, 1.0, (B * K,), np.float32)
    assert (run / "kd_gym-TeacherSelectionLiteFlat-v0" / "vecnormalize.pkl").exists()  # normalize: from the file
    monitor = (run / "0.monitor.csv").read_text().splitlines()
    assert len(monitor) - 2 == 48 // (env_kwargs["episode_steps"])  # 4 episodes of 12 steps (+ 2 header lines)
