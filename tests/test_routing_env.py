"""The reward tiers (kd_gym.credit) and the per-instance env (kd_gym.routing): its ids, spaces and errors, the same
rewards in the single, vector and per-instance envs, same-step episode ends, and a CleanRL-style PPO loop on it."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import B, C, K, instance_size, make

import kd_gym
from kd_gym.losses import multi_teacher_kd_loss
from kd_gym.routing import TeacherRoutingVectorEnv
from kd_gym.vector import TeacherSelectionVectorEnv

LITE = "kd_gym/TeacherSelectionLite-v0"
ROUTING = kd_gym.ROUTING_ENV_IDS[("lite", "return")]
STUDENT_CREDIT = kd_gym.ROUTING_ENV_IDS[("lite", "student_credit")]
GOLD_CREDIT = kd_gym.ROUTING_ENV_IDS[("lite", "gold_credit")]
S_LITE = instance_size(LITE)


def make_routing(env_id: str, env_kwargs: dict, num_envs: int = B, **overrides) -> TeacherRoutingVectorEnv:
    options = {key: value for key, value in env_kwargs.items() if key != "batch_size"}  # num_envs sets B
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **{**options, **overrides})


def exact_weights(steps: int, seed: int = 0, shape: tuple[int, ...] = (B, K)) -> list[np.ndarray]:
    """Weights in eighths: exact through the per-instance map a = 2w - 1, w = (a + 1) / 2; some all-zero rows."""
    rng = np.random.default_rng(seed)
    weights = [(rng.integers(0, 9, shape) / 8).astype(np.float32) for _ in range(steps)]
    for w in weights:
        w[..., 0, :] = 0.0  # instance 0 learns from its label alone (or nothing, on a transfer row)
    return weights


# ------------------------------------------------------------------------------------------------ ids and spaces


def test_every_routing_id_is_a_vector_env_and_gym_make_says_to_call_make_vec() -> None:
    assert len(kd_gym.ROUTING_ENV_IDS) == 6
    for (student, tier), env_id in kd_gym.ROUTING_ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.vector_entry_point == "kd_gym.routing:make_routing_env"
        assert spec.kwargs == {"student": student, "instance_reward": tier}
        with pytest.raises(gym.error.Error, match=r"make them with gymnasium\.make_vec\(id, num_envs=B, "
                                                  r"vectorization_mode='vector_entry_point'\)"):
            gym.make(env_id)


@pytest.mark.parametrize(("view", "num_envs", "size", "action_size"), [
    ("router", B, S_LITE - 2 + K * C, K),  # all instance features but student_ce and labelled; log-probabilities
    ("instance", B, S_LITE + K * 4 + K * C + C, K),
    ("teacher", B * K, S_LITE + 4 + 2 * C + K, 1),  # s_ik and a one-hot teacher id
])
def test_spaces_of_each_view(view, num_envs, size, action_size, env_kwargs) -> None:
    envs = make_routing(ROUTING, env_kwargs, num_envs=num_envs, view=view,
                        **({"batch_size": B} if view == "teacher" else {}))
    assert envs.num_envs == num_envs and envs.batch_size == B
    assert envs.single_observation_space.shape == (size,) and envs.single_observation_space.dtype == np.float32
    assert envs.single_action_space == gym.spaces.Box(-1.0, 1.0, (action_size,), np.float32)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (num_envs, size) and envs.observation_space.contains(obs)
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (num_envs, size) and rewards.shape == terminated.shape == truncated.shape == (num_envs,)
    assert info["gold_credit"].shape == (num_envs,)


def test_num_envs_sets_the_batch_and_a_mismatch_names_the_fix(env_kwargs) -> None:
    envs = make_routing(ROUTING, env_kwargs, num_envs=5)
    assert envs.batch_size == 5 and envs.env.unwrapped.batch_size == 5
    with pytest.raises(ValueError, match=r"num_envs=8 with students=1 means batch_size=8, but batch_size=4 was "
                                         r"given; pass num_envs=students x batch_size \(4\)"):
        make_routing(ROUTING, env_kwargs, num_envs=8, batch_size=4)
    with pytest.raises(ValueError, match="num_envs=9 is not a multiple of students=2"):
        make_routing(ROUTING, env_kwargs, num_envs=9, students=2)
    with pytest.raises(ValueError, match=rf"pass num_envs={B * K}"):
        make_routing(ROUTING, env_kwargs, num_envs=B, view="teacher", batch_size=B)
    with pytest.raises(ValueError, match="instance_reward='dev' is invalid; use one of"):
        make_routing(ROUTING, env_kwargs, instance_reward="dev")
    with pytest.raises(NotImplementedError, match="student credit of its stacked students; use students=1"):
        make_routing(STUDENT_CREDIT, env_kwargs, num_envs=2 * B, students=2)
    with pytest.raises(ValueError, match="needs an env that computes the credit: make it with credit=True"):
        TeacherRoutingVectorEnv(make(LITE, env_kwargs), instance_reward="student_credit")


# ------------------------------------------------------------------------------------------------ the reward tiers


def test_student_credit_is_each_instances_first_order_dev_loss_decrease(env_kwargs) -> None:
    """student_credit[i] = <G, grad_theta loss_i(w)>, G the dev-subset loss gradient, loss_i instance i's term of
    the KD loss under the weights w (labelled and transfer rows, an all-zero row), by autograd instead of the
    trainer's pair-credit decomposition; its mean is the whole batch loss's first-order effect."""
    env = make(LITE, env_kwargs, gold_labels=60, credit=True).unwrapped
    env.reset(seed=0)
    trainer, batch = env.trainer, env.trainer.split("train").batch(np.arange(3 * B))
    batch["teacher_probs"] = torch.softmax(batch["teacher_logits"] / trainer.temperature, -1)
    labelled = batch["labelled"].numpy()
    assert 0 < labelled.sum() < len(labelled), "the batch should mix labelled and transfer rows"
    weights = exact_weights(1, shape=(3 * B, K))[0]
    weights[np.flatnonzero(labelled)[0]] = 0.0  # a labelled row with no teacher: CE alone
    weights[np.flatnonzero(~labelled)[0]] = 0.0  # a transfer row with no teacher: nothing
    pair, student = (part.numpy() for part in trainer.credit(batch, weights, None, "dev_subset"))

    model = trainer.model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    dev = trainer.split("dev_subset").batch(slice(None))
    dev_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(model(**dev["inputs"])[0], dev["labels"]), params)
    loss = multi_teacher_kd_loss(model(**batch["inputs"])[0], batch["teacher_logits"], torch.as_tensor(weights),
                                 batch["labels"], alpha=trainer.alpha, temperature=trainer.temperature,
                                 labelled=batch["labelled"])
    expected = np.array([sum((g * d).sum() for g, d in zip(torch.autograd.grad(term, params, retain_graph=True),
                                                           dev_grad)).item() for term in loss.per_instance])
    np.testing.assert_allclose(student, expected, rtol=1e-4, atol=1e-7)
    assert student[np.flatnonzero(~labelled)[0]] == 0.0 and np.abs(student).max() > 1e-4
    batch_effect = sum((g * d).sum() for g, d in zip(torch.autograd.grad(loss.loss, params), dev_grad)).item()
    assert student.mean() == pytest.approx(batch_effect, rel=1e-4)
    # the pair credit is the student credit of a one-teacher weighting minus its CE part
    assert pair.shape == (3 * B, K)


def test_the_tiers_are_the_same_numbers_in_the_single_vector_and_per_instance_envs(env_kwargs) -> None:
    options = {**env_kwargs, "gold_labels": 60}
    steps = 4
    actions = exact_weights(steps)
    single = make(LITE, options, credit=True)
    single.reset(seed=3)
    single_steps = [single.step(w) for w in actions]
    single_infos = [info for *_, info in single_steps]
    assert any(0 < info["gold_credit"].astype(bool).sum() for info in single_infos), "no labelled row with credit"

    # the per-instance env of one student: each tier's reward is the single env's number for that instance
    for env_id, key in ((STUDENT_CREDIT, "student_credit"), (GOLD_CREDIT, "gold_credit"), (ROUTING, None)):
        envs = make_routing(env_id, options)
        envs.reset(seed=3)
        for (_, reward, _, _, info), w in zip(single_steps, actions):
            _, rewards, _, _, infos = envs.step(2.0 * w - 1.0)
            np.testing.assert_array_equal(envs.last_step["action"], w)
            expected = np.full(B, reward) if key is None else info[key]
            np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-8, err_msg=env_id)
            np.testing.assert_allclose(infos["gold_credit"], info["gold_credit"], rtol=1e-6)
            np.testing.assert_array_equal(infos["env_reward"], np.full(B, reward))
    assert np.abs(single_infos[0]["student_credit"]).max() > 0

    # the vector env of 2 students and the per-instance env over it: student n is the single env seeded 3 + n
    second = make(LITE, options)
    second.reset(seed=4)
    pairs = [np.stack([w, v]) for w, v in zip(actions, exact_weights(steps, seed=1))]
    vector = TeacherSelectionVectorEnv(num_envs=2, **options)
    vector.reset(seed=3)
    envs = make_routing(GOLD_CREDIT, options, num_envs=2 * B, students=2)
    envs.reset(seed=3)
    for both, single_info in zip(pairs, single_infos):
        *_, info = vector.step(both)
        *_, second_info = second.step(both[1])
        _, rewards, *_ = envs.step((2.0 * both - 1.0).reshape(2 * B, K))
        expected = np.stack([single_info["gold_credit"], second_info["gold_credit"]])
        np.testing.assert_allclose(info["gold_credit"], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rewards, expected.reshape(-1), rtol=1e-5, atol=1e-7)


def test_student_credit_over_n_students_through_a_sync_vector_env_of_single_envs(env_kwargs) -> None:
    """What the NotImplementedError of students > 1 with student_credit suggests: N single envs with credit=True
    in a sync vector env, wrapped, give each instance its own student's credit, across episode ends."""
    options = {**env_kwargs, "credit": True, "episode_steps": 2}
    sync = gym.make_vec(LITE, num_envs=2, vectorization_mode="sync", **options)
    envs = TeacherRoutingVectorEnv(sync, "router", "student_credit")
    singles = [make(LITE, options) for _ in range(2)]
    envs.reset(seed=0)
    for n, single in enumerate(singles):
        single.reset(seed=n)
    for step, both in enumerate(zip(exact_weights(5), exact_weights(5, seed=1))):
        _, rewards, _, truncated, _ = envs.step(2.0 * np.concatenate(both) - 1.0)
        expected = []
        for single, w in zip(singles, both):
            *_, single_truncated, info = single.step(w)
            expected.append(info["student_credit"])
            if single_truncated:
                single.reset()
        assert truncated.all() == (step % 2 == 1)
        np.testing.assert_allclose(rewards, np.concatenate(expected), rtol=1e-5, atol=1e-8)


def test_gold_credit_scores_the_mixture_on_labelled_rows_only(env_kwargs) -> None:
    env = make(LITE, env_kwargs, gold_labels=60)
    obs, _ = env.reset(seed=0)
    weights = exact_weights(1)[0]
    *_, info = env.step(weights)
    p = np.exp(-obs["teacher_features"][..., 0].astype(np.float64))  # teacher_ce, 0 where the label is hidden
    labelled = obs["instance_features"][:, 4] > 0.5
    mixture = np.where(weights.sum(1) > 0, (weights * p).sum(1) / np.maximum(weights.sum(1), 1e-12), p.mean(1))
    expected = np.where(labelled, np.log(mixture) - np.log(p.mean(1)), 0.0)
    np.testing.assert_allclose(info["gold_credit"], expected, rtol=1e-5, atol=1e-7)
    assert info["gold_credit"][0] == 0.0  # an all-zero row counts as equal weights


# ------------------------------------------------------------------------------------------------ episodes


def test_an_episode_end_resets_every_sub_env_of_its_student_in_the_same_step(env_kwargs) -> None:
    envs = make_routing(ROUTING, env_kwargs, episode_steps=3, reward="dev_loss_delta")
    obs, _ = envs.reset(seed=0)
    total = np.zeros(B)
    for step in range(3):
        last = obs
        obs, rewards, terminated, truncated, info = envs.step(np.zeros((B, K), np.float32))
        total += rewards
        assert not terminated.any() and truncated.all() == (step == 2)
    assert envs.env.unwrapped.student_steps == 0  # a fresh student, already reset
    assert info["_final_obs"].all() and info["final_obs"].shape == obs.shape
    assert not np.array_equal(info["final_obs"], obs) and not np.array_equal(last, obs)
    episodes = [final["episode"] for final in info["final_info"]]
    assert [e["l"] for e in episodes] == [3] * B
    np.testing.assert_allclose([e["r"] for e in episodes], total)
    assert total[0] != 0.0 and np.all(total == total[0])  # the return tier: the student's dev-loss decrease
    *_, info = envs.step(np.zeros((B, K), np.float32))
    assert "final_info" not in info


# ------------------------------------------------------------------------------------------------ CleanRL-style PPO


def test_cleanrl_style_ppo_runs_on_the_student_credit_id(env_kwargs) -> None:
    """ppo_continuous_action.py's loop with its envs line replaced by make_vec (docs/outside-clients.md): no
    wrappers, SAME_STEP resets, episodic returns from info["final_info"] as the script reads them."""
    from test_outside_clients import CleanRLAgent

    num_steps, iterations, gamma, gae_lambda, clip_coef = 6, 4, 0.0, 0.95, 0.2
    torch.manual_seed(0)
    envs = make_routing(STUDENT_CREDIT, env_kwargs, episode_steps=5)
    agent = CleanRLAgent(envs)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
    n = envs.num_envs
    obs = torch.zeros((num_steps, n) + envs.single_observation_space.shape)
    actions = torch.zeros((num_steps, n) + envs.single_action_space.shape)
    logprobs, rewards, dones, values = (torch.zeros((num_steps, n)) for _ in range(4))
    next_obs, _ = envs.reset(seed=1)
    next_obs, next_done = torch.Tensor(next_obs), torch.zeros(n)
    episodic_returns, losses = [], []
    for _ in range(iterations):
        for step in range(num_steps):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step], actions[step], logprobs[step] = value.flatten(), action, logprob
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.tensor(reward).view(-1)
            next_obs, next_done = torch.Tensor(next_obs), torch.Tensor(np.logical_or(terminations, truncations))
            if "final_info" in infos:  # the script's own block, unchanged
                for info in infos["final_info"]:
                    if info and "episode" in info:
                        episodic_returns.append(info["episode"]["r"])
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages, lastgaelam = torch.zeros_like(rewards), 0
            for t in reversed(range(num_steps)):
                nextnonterminal = 1.0 - (next_done if t == num_steps - 1 else dones[t + 1])
                nextvalues = next_value if t == num_steps - 1 else values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        b_adv, b_ret = advantages.reshape(-1), returns.reshape(-1)
        _, newlogprob, _, newvalue = agent.get_action_and_value(obs.reshape(-1, obs.shape[-1]),
                                                                actions.reshape(-1, actions.shape[-1]))
        ratio = (newlogprob - logprobs.reshape(-1)).exp()
        adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
        v_loss = 0.5 * ((newvalue.view(-1) - b_ret) ** 2).mean()
        optimizer.zero_grad()
        (pg_loss + 0.5 * v_loss).backward()
        optimizer.step()
        losses.append([pg_loss.item(), v_loss.item()])
    envs.close()
    assert np.isfinite(losses).all() and rewards.abs().max() > 0
    assert len(episodic_returns) == B * (iterations * num_steps // 5)  # every sub-env, every 5 steps


#: CleanRL's script, fetched from github.com/vwxyzjn/cleanrl (cleanrl/ppo_continuous_action.py); it needs tyro and
#: tensorboard, which kd-gym does not install
CLEANRL_SCRIPT = os.environ.get("KD_GYM_CLEANRL_SCRIPT", "")
#: the statement docs/outside-clients.md replaces, and the line it puts instead
CLEANRL_ENVS_STATEMENT = """    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name, args.gamma) for i in range(args.num_envs)]
    )
"""
CLEANRL_ENVS_LINE = '    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point")\n'


@pytest.mark.skipif(not CLEANRL_SCRIPT, reason="set KD_GYM_CLEANRL_SCRIPT to CleanRL's ppo_continuous_action.py")
def test_cleanrls_own_ppo_continuous_action_runs_with_its_envs_line_changed(env_kwargs, tmp_path, monkeypatch,
                                                                           capsys) -> None:
    pytest.importorskip("tyro")
    pytest.importorskip("tensorboard")
    source = Path(CLEANRL_SCRIPT).read_text()
    assert source.count(CLEANRL_ENVS_STATEMENT) == 1, "CleanRL's envs statement changed: update the docs' line"
    script = tmp_path / "ppo_continuous_action.py"
    script.write_text(source.replace(CLEANRL_ENVS_STATEMENT, CLEANRL_ENVS_LINE))
    env_id = "kd_gym_test/TinyRoutingStudentCredit-v0"  # the tiny env's options, as a module of one's own would
    options = {key: value for key, value in env_kwargs.items() if key != "batch_size"}
    gym.register(env_id, entry_point="kd_gym.routing:refuse_single_env",
                 vector_entry_point="kd_gym.routing:make_routing_env",
                 kwargs={**options, "instance_reward": "student_credit"})
    monkeypatch.chdir(tmp_path)  # the script writes runs/<run name>/
    monkeypatch.setattr(sys, "argv", [
        str(script), "--env-id", env_id, "--num-envs", str(B), "--num-steps", "24", "--total-timesteps",
        str(3 * 24 * B), "--num-minibatches", "4", "--no-cuda", "--seed", "1"])
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        gym.registry.pop(env_id)
    out = capsys.readouterr().out
    episodes = 3 * 24 // env_kwargs["episode_steps"]
    assert out.count("episodic_return=") == B * episodes, out[-2000:]
    assert out.count("SPS:") == 3


# ------------------------------------------------------------------------------------------------ RL Zoo


def test_rl_zoo_train_runs_ppo_on_the_per_instance_env_through_its_vec_env_wrapper(env_kwargs, tmp_path,
                                                                                  monkeypatch, capsys) -> None:
    pytest.importorskip("rl_zoo3")
    from rl_zoo3.train import train
    from stable_baselines3 import PPO

    rl_zoo_ppo = Path(__file__).resolve().parents[1] / "agents" / "hyperparams" / "rl_zoo" / "ppo.yml"
    env_args = [f"{key}:{value!r}" for key, value in {**env_kwargs, "credit": True}.items()]
    steps = 2 * env_kwargs["episode_steps"]  # student updates: two episodes
    monkeypatch.setattr(sys, "argv", [
        "rl_zoo3.train", "--algo", "ppo", "--env", LITE, "--gym-packages", "kd_gym", "-conf", str(rl_zoo_ppo),
        "-n", str(steps * B), "--seed", "0", "--eval-freq", "-1", "-f", str(tmp_path / "logs"), "--env-kwargs",
        *env_args, "-params", "n_steps:3", "batch_size:24", "n_epochs:1"])
    train()
    assert "Loading hyperparameters from: " + str(rl_zoo_ppo) in capsys.readouterr().out
    run = tmp_path / "logs" / "ppo" / "kd_gym-TeacherSelectionLite-v0_1"
    model = PPO.load(run / "kd_gym-TeacherSelectionLite-v0.zip", device="cpu")
    assert model.n_envs == B and model.num_timesteps == steps * B  # one SB3 step per instance
    assert model.observation_space.shape == (S_LITE - 2 + K * C,)  # the router view of one instance
    assert model.action_space == gym.spaces.Box(-1.0, 1.0, (K,), np.float32)
    monitor = (run / "0.monitor.csv").read_text().splitlines()
    assert len(monitor) - 2 == 2  # the student's two episodes (+ 2 header lines)
