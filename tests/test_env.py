"""Tests for kd_gym.env: the registered TeacherSelection environments, through gymnasium.make, on the tiny task."""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import (
    ACTION_TYPES,
    ENV_IDS,
    LR,
    S_BASE,
    B,
    C,
    K,
    P,
    assert_obs_equal,
    instance_size,
    make,
    student_parameters,
    weights_actions,
)

import kd_gym
import kd_gym.rewards

# ------------------------------------------------------------------------------------------------ checkers, spaces


# Stable-Baselines3's advice about its default policies (flatten non-1D observations, symmetric Box actions) does
# not apply: kd-gym's agents share one network across the B instances of a batch.
@pytest.mark.filterwarnings("ignore:.*unconventional shape:UserWarning")
@pytest.mark.filterwarnings("ignore:.*(image|channels-last|resolution for an image):UserWarning")
@pytest.mark.filterwarnings("ignore:.*symmetric and normalized Box action space:UserWarning")
@ENV_IDS
@ACTION_TYPES
def test_gymnasium_and_sb3_env_checkers_pass(env_id, action_type, env_kwargs) -> None:
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(env_id, env_kwargs, action_type=action_type)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env.unwrapped, skip_render_check=True)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    sb3_check_env(env.unwrapped)


@ENV_IDS
@ACTION_TYPES
def test_spaces_have_the_documented_shapes(env_id, action_type, env_kwargs) -> None:
    env = make(env_id, env_kwargs, action_type=action_type)
    spaces = env.observation_space.spaces
    assert spaces["teacher_features"].shape == (B, K, P) and spaces["teacher_features"].dtype == np.float32
    s = instance_size(env_id)
    assert spaces["instance_features"].shape == (B, s) and spaces["instance_features"].dtype == np.float32
    assert spaces["teacher_logits"].shape == (B, K, C) and spaces["student_logits"].shape == (B, C)
    if action_type == "weights":
        assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (B, K)
        assert env.action_space.low.min() == 0.0 and env.action_space.high.max() == 1.0
    else:
        assert isinstance(env.action_space, gym.spaces.MultiBinary) and env.action_space.shape == (B, K)
    assert env.unwrapped.teacher_feature_names == ["teacher_ce", "teacher_entropy", "teacher_correct",
                                                   "teacher_student_kl"]
    assert env.unwrapped.instance_feature_names == ["teacher_agreement", "student_ce", "student_entropy", "length",
                                                    "labelled", *(f"embedding[{i}]" for i in range(s - S_BASE))]
    assert env.unwrapped.teacher_names == ["teacher0", "teacher1", "teacher2"]
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert {key: value.shape for key, value in obs.items()} == {
        "teacher_features": (B, K, P), "instance_features": (B, s), "teacher_logits": (B, K, C),
        "student_logits": (B, C)}
    assert info["step"] == 0 and 0.0 <= info["dev_metric"] <= 1.0  # the dev reward measured its baseline


@ENV_IDS
def test_include_representation_appends_the_student_representation(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, include_representation=True, include_embedding=False, ngram_dim=16)
    size = 16 if "Lite" in env_id else 32  # lite: its mean n-gram embedding; full: the encoder's hidden size
    names = env.unwrapped.instance_feature_names
    assert len(names) == S_BASE + size and names[S_BASE:] == [f"student_repr[{i}]" for i in range(size)]
    obs, _ = env.reset(seed=0)
    assert obs["instance_features"].shape == (B, S_BASE + size) == env.observation_space["instance_features"].shape
    assert np.abs(obs["instance_features"][:, S_BASE:]).sum() > 0


def test_include_embedding_on_data_without_embeddings_says_what_to_do(env_kwargs) -> None:
    # data built for the n-gram student alone (no frozen embeddings) cannot show the embedding
    data = gym.make("kd_gym/TeacherSelectionLite-v0", **env_kwargs, include_embedding=False).unwrapped.student_data
    assert "embeddings" not in data.splits["train"].inputs
    with pytest.raises(ValueError, match="include_embedding=True, but the data's inputs have no 'embeddings'"):
        gym.make("kd_gym/TeacherSelectionLite-v0", data=data, device="cpu", include_embedding=True)


# ------------------------------------------------------------------------------------------------ seeding


@ENV_IDS
def test_same_seed_same_episode_other_seed_other_start(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, reward="neg_ce_kd", lr=LR[env_id])
    actions = weights_actions(5)

    def episode(seed: int):
        first, _ = env.reset(seed=seed)
        steps = [env.step(action) for action in actions]
        return first, [s[0] for s in steps], [s[1] for s in steps], [s[4]["loss"] for s in steps]

    first_a, obs_a, rewards_a, losses_a = episode(7)
    first_b, obs_b, rewards_b, losses_b = episode(7)
    assert_obs_equal(first_a, first_b)
    for a, b in zip(obs_a, obs_b):
        assert_obs_equal(a, b)
    assert rewards_a == rewards_b and losses_a == losses_b
    assert all(r < 0 for r in rewards_a)  # neg_ce_kd: a real number at every step, not 0
    # A second environment made the same way starts the same.
    assert_obs_equal(make(env_id, env_kwargs).reset(seed=7)[0], first_a)
    # Another seed: another student and another batch.
    first_c, _ = env.reset(seed=8)
    assert not np.array_equal(first_c["student_logits"], first_a["student_logits"])
    assert not np.array_equal(first_c["teacher_features"], first_a["teacher_features"])


# ------------------------------------------------------------------------------------------------ actions


@ENV_IDS
@ACTION_TYPES
def test_invalid_actions_are_errors_that_name_the_expected_shape(env_id, action_type, env_kwargs) -> None:
    env = make(env_id, env_kwargs, action_type=action_type)
    env.reset(seed=0)
    nan = np.ones((B, K), dtype=np.float32)
    nan[2, 1] = np.nan
    for bad in (nan, np.full((B, K), np.inf, dtype=np.float32)):
        with pytest.raises(ValueError, match=r"NaN.*\(8, 3\)"):
            env.step(bad)
    for shape in ((B, K - 1), (B - 1, K), (B * K,), (1, B, K)):
        with pytest.raises(ValueError, match=r"\(8, 3\)"):
            env.step(np.ones(shape, dtype=np.float32))
    assert env.unwrapped.trainer.steps == 0  # nothing was trained on a rejected action


def test_step_before_reset_is_an_error(env_kwargs) -> None:
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones((B, K), dtype=np.float32))


@ENV_IDS
def test_out_of_range_weights_are_clipped(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs)

    def first_step(action):
        env.reset(seed=3)
        return env.step(np.asarray(action, dtype=np.float32))[4]

    ones, twos = first_step(np.ones((B, K))), first_step(2 * np.ones((B, K)))
    np.testing.assert_array_equal(twos["weights"], ones["weights"])
    np.testing.assert_allclose(ones["weights"], np.full((B, K), 1 / 3), rtol=1e-6)
    assert twos["loss"] == ones["loss"] and twos["kd"] == ones["kd"]
    mixed = np.tile([[2.0, 0.5, -1.0]], (B, 1))
    mixed[0] = -1.0  # all clipped to 0: this row learns from the gold label alone
    info = first_step(mixed)
    np.testing.assert_allclose(info["weights"][1:], np.tile([[2 / 3, 1 / 3, 0.0]], (B - 1, 1)), rtol=1e-6)
    np.testing.assert_array_equal(info["weights"][0], 0.0)


@ENV_IDS
def test_select_mode_takes_zeros_and_ones_only(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, action_type="select")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="select"):
        env.step(np.full((B, K), 0.5, dtype=np.float32))
    assert env.unwrapped.trainer.steps == 0
    action = np.tile(np.array([[1, 0, 1]], dtype=np.int8), (B, 1))
    action[0] = 0  # drop every teacher: gold label alone
    _, _, _, _, info = env.step(action)
    np.testing.assert_allclose(info["weights"][1:], np.tile([[0.5, 0.0, 0.5]], (B - 1, 1)))
    np.testing.assert_array_equal(info["weights"][0], 0.0)
    env.step(env.action_space.sample())  # the space's own samples are valid actions
    assert env.unwrapped.trainer.steps == 2


# ------------------------------------------------------------------------------------------------ episodes


@ENV_IDS
def test_episode_is_truncated_after_episode_steps(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, episode_steps=5)
    env.reset(seed=0)
    flags = []
    for t, action in enumerate(weights_actions(5), start=1):
        _, reward, terminated, truncated, info = env.step(action)
        flags.append((terminated, truncated))
        assert info["step"] == t == info["student_steps"]
        assert info["weights"].shape == (B, K) and np.isfinite([info["loss"], info["ce"], info["kd"]]).all()
    assert flags == [(False, False)] * 4 + [(False, True)]  # a time limit: truncated, not terminated
    # The next episode starts over.
    _, info = env.reset(seed=0)
    assert info["step"] == 0 and env.step(weights_actions(1)[0])[3] is False


@ENV_IDS
def test_keep_student_keeps_the_trained_weights(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, lr=LR[env_id])
    env.reset(seed=1)
    initial = student_parameters(env)
    for action in weights_actions(4):
        env.step(action)
    trained = student_parameters(env)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)

    env.reset(options={"keep_student": True})
    for name, value in student_parameters(env).items():
        assert torch.equal(value, trained[name]), name
    env.reset(seed=1)  # a plain reset: the fresh student of that seed again
    for name, value in student_parameters(env).items():
        assert torch.equal(value, initial[name]), name
    env.reset()  # no seed: a fresh student, not the trained one
    fresh = student_parameters(env)
    heads = [name for name in fresh if name.endswith("classifier.weight")]
    assert heads and all(not torch.equal(fresh[name], trained[name]) for name in heads)
    assert all(not torch.equal(fresh[name], initial[name]) for name in heads)  # a new draw, not seed 1's


def test_the_action_changes_the_update(env_kwargs) -> None:
    # The same student, batch and seed, trained with different weights, must end in different students.
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs, lr=1e-2)
    ends = []
    for row in ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]):
        env.reset(seed=5)
        action = np.tile(np.asarray([row], np.float32), (B, 1))
        for _ in range(3):
            _, _, _, _, info = env.step(action)
        np.testing.assert_allclose(info["weights"].sum(1), 1.0 if sum(row) else 0.0)
        ends.append(student_parameters(env))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert any(not torch.equal(ends[a][name], ends[b][name]) for name in ends[a]), (a, b)


def test_reset_and_step_leave_the_global_torch_generator_alone(env_kwargs) -> None:
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    env.reset(seed=0)
    env.step(weights_actions(1)[0])
    env.reset(seed=1)
    assert torch.equal(torch.rand(4), expected)
    # ... and the global generator does not change the student: same seed, same episode whatever was drawn.
    torch.manual_seed(0)
    first = [env.reset(seed=3)[0]] + [env.step(a)[0] for a in weights_actions(3)]
    torch.manual_seed(99)
    torch.rand(1000)
    second = [env.reset(seed=3)[0]] + [env.step(a)[0] for a in weights_actions(3)]
    for a, b in zip(first, second):
        assert_obs_equal(a, b)


@ENV_IDS
def test_env_state_dict_continues_the_episode_exactly(env_id, env_kwargs) -> None:
    env = make(env_id, env_kwargs, reward="dev_loss_delta", lr=LR[env_id]).unwrapped
    env.reset(seed=0)
    for action in weights_actions(4):
        env.step(action)
    state = env.state_dict()
    after = [env.step(a) for a in weights_actions(6, seed=1)]
    restored = make(env_id, env_kwargs, reward="dev_loss_delta", lr=LR[env_id]).unwrapped
    restored.load_state_dict(state)
    replay = [restored.step(a) for a in weights_actions(6, seed=1)]
    assert [s[1] for s in replay] == [s[1] for s in after]  # rewards
    assert [s[4]["loss"] for s in replay] == [s[4]["loss"] for s in after]
    for a, b in zip(replay, after):
        assert_obs_equal(a[0], b[0])
    assert restored.student_steps == env.student_steps == 10


def test_dev_subset_is_fixed(env_kwargs) -> None:
    env = make("kd_gym/TeacherSelectionLite-v0", env_kwargs)
    indices = env.unwrapped.dev_indices.copy()
    assert len(indices) == 20 and len(set(indices)) == 20 and np.all(np.diff(indices) > 0) and indices.max() < 30
    env.reset(seed=0)
    env.reset(seed=1)
    np.testing.assert_array_equal(env.unwrapped.dev_indices, indices)
    np.testing.assert_array_equal(make("kd_gym/TeacherSelectionLite-v0", env_kwargs).unwrapped.dev_indices, indices)


# ------------------------------------------------------------------------------------------------ options, registration


@ENV_IDS
def test_unknown_option_is_a_type_error_listing_the_options(env_id, env_kwargs) -> None:
    with pytest.raises(TypeError, match="bogus_option") as error:
        make(env_id, env_kwargs, bogus_option=1)
    assert all(name in str(error.value) for name in kd_gym.default_config())


@pytest.mark.parametrize("option, value, pattern", [
    ("action_type", "soft", "action_type"),
    ("student", "huge", "student"),
    ("batch_size", 0, "batch_size"),
    ("episode_steps", 0, "episode_steps"),
    ("reward_interval", 0, "reward_interval"),
])
def test_invalid_option_values_are_errors(option, value, pattern, env_kwargs) -> None:
    with pytest.raises(ValueError, match=pattern):
        make("kd_gym/TeacherSelectionLite-v0", env_kwargs, **{option: value})


def test_registration_is_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered again
        importlib.reload(kd_gym)
        kd_gym._register()
        import kd_gym as again  # noqa: F401
    for env_id, student in zip(kd_gym.ENV_IDS, ("full", "lite")):
        spec = gym.spec(env_id)
        assert spec.entry_point == "kd_gym.env:TeacherSelectionEnv" and spec.kwargs == {"student": student}
    n_ids = len(kd_gym.ENV_IDS) + len(kd_gym.FLAT_ENV_IDS) + len(kd_gym.ROUTING_ENV_IDS)
    assert sum(env_id.startswith("kd_gym/") for env_id in gym.registry) == n_ids


@ENV_IDS
def test_pair_credit_before_acting_is_what_info_reports_after(env_id, env_kwargs) -> None:
    # Credit differentiates twice through the student: the full student's attention must support that too.
    env = make(env_id, env_kwargs, credit=True)
    env.reset(seed=0)
    before = env.unwrapped.pair_credit()
    _, _, _, _, info = env.step(np.ones((B, K), dtype=np.float32))
    assert before.shape == (B, K) and np.isfinite(before).all() and np.abs(before).max() > 0
    np.testing.assert_allclose(info["credit"], before, rtol=1e-5, atol=1e-8)
