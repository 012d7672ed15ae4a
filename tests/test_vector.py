"""Tests for kd_gym.vector: N lite students stepped as one batched computation, against N single envs.

Identical per seed: sub-env n of ``gym.make_vec(LITE, num_envs=N)`` reset with seed s must give what
``gym.make(LITE)`` reset with seed s + n gives under the same actions (batches, student init, dropout, observations,
rewards, flags, info), up to float32 rounding (ATOL). The reference is Gymnasium's own SyncVectorEnv over single envs,
which has the same seeding and NEXT_STEP autoreset conventions.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import LR, OBS_KEYS, B, C, K

import kd_gym  # noqa: F401  (registers the ids)
from kd_gym.data import KDData
from kd_gym.student import LiteStudent, NgramStudent, StudentTrainer
from kd_gym.student_stack import StackedLiteStudents, StackedNgramStudents, stacked_kd_loss
from kd_gym.vector import TeacherSelectionVectorEnv


@pytest.fixture(params=["mlp", "ngrams"])
def env_kwargs(env_kwargs: dict, request) -> dict:
    """The conftest's env_kwargs with each lite student the vector env batches."""
    return {**env_kwargs, "lite_student": request.param}


LITE = "kd_gym/TeacherSelectionLite-v0"
ATOL = 1e-5  # observations, rewards, info values, student weights
N = 3


def make_vector(env_kwargs: dict, num_envs: int = N, **overrides) -> TeacherSelectionVectorEnv:
    return gym.make_vec(LITE, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **{**env_kwargs, "lr": LR[LITE], **overrides})


def make_reference(env_kwargs: dict, num_envs: int = N, **overrides) -> gym.vector.SyncVectorEnv:
    options = {**env_kwargs, "lr": LR[LITE], **overrides}
    return gym.vector.SyncVectorEnv([lambda: gym.make(LITE, **options) for _ in range(num_envs)])


def assert_close(vector: tuple, reference: tuple, where: str) -> None:
    """Compare (obs, [reward, terminated, truncated,] info) of the vector env and the reference."""
    obs, info = vector[0], vector[-1]
    ref_obs, ref_info = reference[0], reference[-1]
    assert obs.keys() == ref_obs.keys() == OBS_KEYS
    for key in OBS_KEYS:
        assert obs[key].shape == ref_obs[key].shape, (where, key)
        np.testing.assert_allclose(obs[key], ref_obs[key], atol=ATOL, rtol=0, err_msg=f"{where}: obs {key}")
    if len(vector) == 5:
        np.testing.assert_allclose(vector[1], reference[1], atol=ATOL, rtol=0, err_msg=f"{where}: rewards")
        np.testing.assert_array_equal(vector[2], reference[2], err_msg=f"{where}: terminated")
        np.testing.assert_array_equal(vector[3], reference[3], err_msg=f"{where}: truncated")
    assert sorted(info) == sorted(ref_info), where
    for key in (k for k in ref_info if not k.startswith("_")):
        mask = ref_info[f"_{key}"]
        np.testing.assert_array_equal(info[f"_{key}"], mask, err_msg=f"{where}: info mask _{key}")
        np.testing.assert_allclose(np.asarray(info[key][mask], dtype=np.float64),
                                   np.asarray(ref_info[key][mask], dtype=np.float64), atol=ATOL, rtol=0,
                                   err_msg=f"{where}: info {key}")


def assert_students_match(vector: TeacherSelectionVectorEnv, reference: gym.vector.SyncVectorEnv) -> None:
    for n, single in enumerate(reference.envs):
        expected = single.unwrapped.trainer.model.state_dict()
        actual = vector.student_state_dict(n)
        assert actual.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name], atol=ATOL, rtol=0, msg=f"student {n}: {name}")


def random_actions(rng: np.random.Generator, action_type: str = "weights") -> np.ndarray:
    if action_type == "select":
        return (rng.random((N, B, K)) < 0.6).astype(np.float32)
    return rng.random((N, B, K)).astype(np.float32)


def test_stacked_students_are_student_trainers_with_clipping_dropout_and_their_own_step_counts() -> None:
    torch.manual_seed(0)
    d, h, c, k, b, n, clip = 16, 24, 3, 2, 6, 3, 0.05  # a small clip: every update is clipped, per student
    trainers = [StudentTrainer(LiteStudent(d, c, h), KDData(None, ["t0", "t1"]), lr=1e-2, grad_clip=clip,
                               device="cpu") for _ in range(n)]
    stack = StackedLiteStudents(LiteStudent(d, c, h), n, lr=1e-2, weight_decay=0.01, grad_clip=clip, device="cpu")
    for i, seed in enumerate([3, 4, 5]):
        trainers[i].reset(seed=seed)
        stack.reset(i, seed)
    for step in range(8):
        if step == 4:  # student 1 starts over: AdamW bias corrections differ per student from here
            trainers[1].reset(seed=9)
            stack.reset(1, 9)
        x, teachers = torch.randn(n, b, d), 3 * torch.randn(n, b, k, c)
        weights, labels = torch.rand(n, b, k), torch.randint(0, c, (n, b))
        logits, _ = stack.forward(x, stack.dropout_masks(b), train=True)
        logits.requires_grad_()
        loss = stacked_kd_loss(logits, teachers, weights, labels, alpha=0.5, temperature=2.0)
        stack.update(torch.autograd.grad(loss.loss.sum(), logits)[0])
        for i, trainer in enumerate(trainers):
            batch = {"inputs": {"embeddings": x[i]}, "teacher_logits": teachers[i], "labels": labels[i]}
            single_logits, _ = trainer.forward(batch, grad=True)
            torch.testing.assert_close(logits[i], single_logits, atol=ATOL, rtol=0)
            result = trainer.train_step(batch, weights[i], logits=single_logits)
            norm = torch.stack([p.grad.norm() for p in trainer.model.parameters()]).norm()
            assert norm.item() == pytest.approx(clip, abs=1e-6)  # every update is clipped
            for part in ("loss", "ce", "kd"):
                torch.testing.assert_close(getattr(loss, part)[i], getattr(result, part), atol=ATOL, rtol=0)
    assert stack.steps.tolist() == [8, 4, 8]
    for i, trainer in enumerate(trainers):
        for name, value in trainer.model.state_dict().items():
            torch.testing.assert_close(stack.state_dict(i)[name], value, atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("update", ["sparse", "dense", "sgd"], ids=["sparse-table", "dense-table", "sgd-table"])
def test_stacked_ngram_students_are_student_trainers_with_clipping_padding_and_their_own_step_counts(update) -> None:
    # to float32 rounding at these tiny sizes (a batched product may take another kernel than a single one); bit for
    # bit at the default sizes: tests/test_vector_sizes.py
    torch.manual_seed(0)
    buckets, dim, c, k, b, length, n, clip = 50, 8, 3, 2, 6, 7, 3, 0.05  # every update is clipped
    sparse = update != "dense"
    options = {"sparse": sparse, **({"sgd_lr": 0.5, "sgd_steps": 6} if update == "sgd" else {})}  # decays, then held
    trainers = [StudentTrainer(NgramStudent(buckets, c, dim, **options), KDData(None, ["t0", "t1"]), lr=1e-2,
                               grad_clip=clip, device="cpu") for _ in range(n)]
    stack = StackedNgramStudents(NgramStudent(buckets, c, dim, **options), n, lr=1e-2, weight_decay=0.01,
                                 grad_clip=clip, device="cpu")
    for i, seed in enumerate([3, 4, 5]):
        trainers[i].reset(seed=seed)
        stack.reset(i, seed)
    for step in range(8):
        if step == 4:  # student 1 starts over: AdamW bias corrections differ per student from here
            trainers[1].reset(seed=9)
            stack.reset(1, 9)
        ids = torch.randint(1, 6, (n, b, length), dtype=torch.int32)  # few ids: rows recur within and across rows
        ids[:, :, 4:] *= (torch.rand(n, b, length - 4) < 0.3).int()  # padding (0) at the end of most rows
        ids[:, 0] = 0  # a row of padding only
        teachers, weights, labels = 3 * torch.randn(n, b, k, c), torch.rand(n, b, k), torch.randint(0, c, (n, b))
        logits, _ = stack.forward(ids, train=True)
        logits.requires_grad_()
        loss = stacked_kd_loss(logits, teachers, weights, labels, alpha=0.5, temperature=2.0)
        stack.update(torch.autograd.grad(loss.loss.sum(), logits)[0])
        for i, trainer in enumerate(trainers):
            batch = {"inputs": {"ngram_ids": ids[i]}, "teacher_logits": teachers[i], "labels": labels[i]}
            single_logits, _ = trainer.forward(batch, grad=True)
            torch.testing.assert_close(logits[i], single_logits, atol=ATOL, rtol=0)
            trainer.train_step(batch, weights[i], logits=single_logits)
            grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in trainer.model.parameters()]
            assert trainer.model.embedding.weight.grad.is_sparse == sparse
            if update == "sgd":  # fastText's SGD clips nothing of the table: the classifier is clipped on its own
                grads = grads[1:]
            norm = torch.stack([g.norm() for g in grads]).norm()
            assert norm.item() == pytest.approx(clip, abs=1e-6)  # every update is clipped
    assert stack.steps.tolist() == [8, 4, 8]
    for i, trainer in enumerate(trainers):
        for name, value in trainer.model.state_dict().items():
            torch.testing.assert_close(stack.state_dict(i)[name], value, atol=ATOL, rtol=0, msg=name)
        assert not stack.state_dict(i)["embedding.weight"][0].any()  # the padding row stays zero
    shared = torch.randint(0, buckets, (9, length), dtype=torch.int32)  # evaluation rows shared by the students
    for i, trainer in enumerate(trainers):
        trainer.model.eval()
        torch.testing.assert_close(stack.predict(shared)[i], trainer.model(shared)[0].detach(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("reward", ["dev_delta", "dev_loss_delta", "neg_ce", "neg_ce_kd"])
def test_sub_envs_match_single_envs_through_episode_ends_and_autoreset(reward, env_kwargs) -> None:
    vector, reference = make_vector(env_kwargs, reward=reward), make_reference(env_kwargs, reward=reward)
    assert_close(vector.reset(seed=7), reference.reset(seed=7), "reset")
    rng = np.random.default_rng(0)
    truncations, rewards = [], []
    for t in range(30):  # episode_steps 12: two episode ends, two autoresets
        actions = random_actions(rng)
        result, expected = vector.step(actions), reference.step(actions)
        assert_close(result, expected, f"step {t}")
        truncations.append(bool(result[3].all()))
        rewards.append(result[1])
    assert truncations.count(True) == 2 and truncations[11] and truncations[24]  # autoreset step 12 is not counted
    assert np.abs(rewards).max() > 0  # the comparison saw real rewards
    assert_students_match(vector, reference)
    final = vector.evaluate("dev")
    for n, single in enumerate(reference.envs):
        expected = single.unwrapped.evaluate("dev")
        assert final[n]["metric"] == pytest.approx(expected["metric"], abs=1e-9)
        assert final[n]["loss"] == pytest.approx(expected["loss"], abs=ATOL)


def test_observation_options_select_actions_seed_lists_keep_student_and_reset_mask_match(env_kwargs) -> None:
    options = {"include_representation": True, "include_embedding": True, "action_type": "select",
               "reward": "neg_ce_kd", "gold_labels": 60}
    vector, reference = make_vector(env_kwargs, **options), make_reference(env_kwargs, **options)
    assert_close(vector.reset(seed=[5, 11, 3]), reference.reset(seed=[5, 11, 3]), "reset")
    rng = np.random.default_rng(1)
    for t in range(5):
        actions = random_actions(rng, "select")
        assert_close(vector.step(actions), reference.step(actions), f"step {t}")
    keep = {"keep_student": True}
    assert_close(vector.reset(options=dict(keep)), reference.reset(options=dict(keep)), "keep_student reset")
    assert vector.student_steps.tolist() == [5, 5, 5]
    for t in range(4):
        actions = random_actions(rng, "select")
        assert_close(vector.step(actions), reference.step(actions), f"after keep_student, step {t}")
    mask = np.array([False, True, False])
    assert_close(vector.reset(seed=[None, 40, None], options={"reset_mask": mask}),
                 reference.reset(seed=[None, 40, None], options={"reset_mask": mask.copy()}), "masked reset")
    assert vector.student_steps.tolist() == [9, 0, 9]  # AdamW with different step counts per student from here
    for t in range(6):
        actions = random_actions(rng, "select")
        assert_close(vector.step(actions), reference.step(actions), f"after masked reset, step {t}")
    assert_students_match(vector, reference)


def test_spaces_are_the_single_envs_with_a_leading_num_envs_axis(env_kwargs) -> None:
    vector = make_vector(env_kwargs)
    single = gym.make(LITE, **{**env_kwargs, "lr": LR[LITE]})
    assert isinstance(vector, gym.vector.VectorEnv) and vector.num_envs == N
    assert vector.metadata["autoreset_mode"] is gym.vector.AutoresetMode.NEXT_STEP
    assert vector.single_observation_space == single.observation_space
    assert vector.single_action_space == single.action_space
    assert vector.action_space.shape == (N, B, K)
    obs, info = vector.reset(seed=0)
    assert vector.observation_space.contains(obs)
    assert obs["teacher_logits"].shape == (N, B, K, C) and obs["student_logits"].shape == (N, B, C)
    assert info["step"].tolist() == [0, 0, 0] and info["_dev_metric"].all()
    assert vector.teacher_names == single.unwrapped.teacher_names
    assert vector.instance_feature_names == single.unwrapped.instance_feature_names


def test_sub_envs_get_different_students_and_the_same_seed_gives_the_same_ones(env_kwargs) -> None:
    vector = make_vector(env_kwargs)
    obs, _ = vector.reset(seed=0)
    students = [vector.student_state_dict(n) for n in range(N)]
    assert not torch.equal(students[0]["classifier.weight"], students[1]["classifier.weight"])
    assert not np.array_equal(obs["student_logits"][0], obs["student_logits"][1])
    assert not np.array_equal(vector._indices[0], vector._indices[1])  # each sub-env its own batch order
    again, _ = vector.reset(seed=0)
    for key in OBS_KEYS:
        np.testing.assert_array_equal(again[key], obs[key])
    torch.testing.assert_close(vector.student_state_dict(2), students[2], atol=0, rtol=0)
    vector.reset(seed=1)  # sub-env 0 now has seed 1: sub-env 1's old student
    torch.testing.assert_close(vector.student_state_dict(0), students[1], atol=0, rtol=0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"credit": True}, "credit=True"),
    ({"reward": "dev_loss_paired"}, "'dev_loss_paired' is not computed by the vector env"),
    ({"student": "full"}, "lite students only"),
])
def test_unsupported_options_raise_a_clear_error(overrides, message, env_kwargs) -> None:
    with pytest.raises(NotImplementedError, match=message) as error:
        make_vector(env_kwargs, **overrides)
    assert "vectorization_mode='sync'" in str(error.value)


def test_bad_calls_name_the_value_and_the_fix(env_kwargs) -> None:
    with pytest.raises(ValueError, match="num_envs=0"):
        TeacherSelectionVectorEnv(num_envs=0, **env_kwargs)
    vector = make_vector(env_kwargs)
    with pytest.raises(RuntimeError, match="call reset"):
        vector.step(np.ones((N, B, K)))
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(num_envs, batch_size, num_teachers\) = \(3, 8, 3\)"):
        vector.step(np.ones((B, K)))
    with pytest.raises(ValueError, match="got 2 seeds for num_envs=3"):
        vector.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="reset_mask"):
        vector.reset(options={"reset_mask": [True, False, True]})


@pytest.mark.parametrize("rule, table_grads, table_moments", [("dense", True, True), ("sparse", False, True),
                                                              ("sgd", False, False)])
def test_a_stack_keeps_only_the_table_state_its_update_rule_reads(rule, table_grads, table_moments) -> None:
    n, buckets, dim, c = 3, 50, 4, 3
    options = {"dense": {}, "sparse": {"sparse": True}, "sgd": {"sgd_lr": 1.0, "sgd_steps": 10}}[rule]
    stack = StackedNgramStudents(NgramStudent(buckets, c, dim, **options), n, lr=1e-2, weight_decay=0.01,
                                 grad_clip=1.0)
    table, classifier = n * buckets * dim, n * (c * dim + c)
    assert stack.flat_params.numel() == table + classifier
    assert stack.flat_grads.numel() == classifier + table * table_grads
    assert stack.exp_avg.numel() == stack.exp_avg_sq.numel() == classifier + table * table_moments
    assert (stack.grads[0] is None) != table_grads and (stack._moments[0][0] is None) != table_moments
