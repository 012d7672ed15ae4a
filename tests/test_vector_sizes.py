"""The vector env at the default lite sizes (mlp: D 384, H 128; n-grams: a 16,384 x 32 table, ids of width 48; K 7,
C 3, B 32, N 16): bit-identical to single envs.

tests/test_vector.py checks the contract on the tiny env (D 32, B 8, N 3). Which kernel a batched product or an
elementwise pass takes depends on the shapes and the memory layout (a product written into a strided slice of the flat
gradient buffer rounds differently from a fresh one for some shapes), so the sizes that benchmarks and the train-eval
protocol run get their own check: observations, rewards, info weights and student weights equal bit for bit, through an autoreset and a
masked reset (after which the students' AdamW step counts differ).
"""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_gym  # noqa: F401  (registers the ids)
from kd_gym.data import KDData, SplitTensors
from kd_gym.tasks import Task

LITE = "kd_gym/TeacherSelectionLite-v0"
N, B, D, K, C = 16, 32, 384, 7, 3
BUCKETS, WIDTH = 16384, 48  # the n-gram student's default table; ids per row (padded with 0)


def default_sized_data(seed: int = 0, rows: int = 640, ngrams: bool = False) -> KDData:
    """Synthetic embeddings around one centre per class (and with ``ngrams`` n-gram ids, what the n-gram student
    reads) and K teachers of increasing skill, at the default sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (C, D))

    def split(n: int) -> SplitTensors:
        gold = rng.integers(0, C, n)
        logits = rng.normal(0.0, 1.0, (n, K, C))
        logits[np.arange(n)[:, None], np.arange(K), gold[:, None]] += np.linspace(0.5, 4.0, K)
        embeddings = torch.tensor(centres[gold] + rng.normal(0.0, 1.0, (n, D)), dtype=torch.float32)
        # n-gram ids: a few ids per class that recur (so rows share table rows), the rest spread over the table
        ids = np.where(rng.random((n, WIDTH)) < 0.3, 1 + gold[:, None] * 10 + rng.integers(0, 10, (n, WIDTH)),
                       rng.integers(1, BUCKETS, (n, WIDTH)))
        ids[np.arange(WIDTH) >= rng.integers(3, WIDTH + 1, n)[:, None]] = 0  # padding after each row's length
        inputs = {"embeddings": embeddings, **({"ngram_ids": torch.tensor(ids, dtype=torch.int32)} if ngrams else {})}
        return SplitTensors(inputs, torch.tensor(gold), torch.tensor(rng.integers(5, 30, n)),
                            torch.tensor(logits, dtype=torch.float32))

    tables = {name: datasets.Dataset.from_dict({"text": ["unused"], "label": [0]}) for name in ("train", "dev", "test")}
    task = Task("synthetic", tables, [f"label{c}" for c in range(C)], "accuracy")
    return KDData(task, [f"teacher{k}" for k in range(K)],
                  {"train": split(rows), "dev": split(rows // 2), "test": split(rows // 2)})


@pytest.mark.parametrize(("student", "fused"), [("mlp", True), ("mlp", False), ("ngrams", True), ("ngrams", False),
                                                ("ngrams-dense", True), ("ngrams-dense", False), ("ngrams-sgd", True),
                                                ("ngrams-sgd", False)],
                         ids=["mlp-fused-adamw", "mlp-whole-buffer-adamw", "ngrams-sparse-fused-adamw",
                              "ngrams-sparse-unfused-adamw", "ngrams-dense-fused-adamw", "ngrams-dense-whole-buffer-adamw",
                              "ngrams-sgd-fused-adamw", "ngrams-sgd-unfused-adamw"])
def test_sub_envs_are_bit_identical_to_single_envs_at_the_default_sizes(student, fused, monkeypatch) -> None:
    import kd_gym.sparse
    import kd_gym.stacked_base
    import kd_gym.stacked_ngrams
    import kd_gym.student

    if fused and not kd_gym.student.fused_adamw(torch.device("cpu")):
        pytest.skip("this torch has no fused AdamW kernel for the CPU")
    if not fused:  # the path of a torch without one: torch.optim.AdamW's default, the stack's whole-buffer update
        for module in (kd_gym.sparse, kd_gym.student, kd_gym.stacked_base, kd_gym.stacked_ngrams):
            monkeypatch.setattr(module, "fused_adamw", lambda device: False)
    ngrams = student.startswith("ngrams")
    options = {"data": default_sized_data(ngrams=ngrams), "lite_student": "ngrams" if ngrams else student,
               "ngram_update": student.removeprefix("ngrams-") if "-" in student else "sparse", "device": "cpu",
               "episode_steps": 9,
               "dev_subset": 200, "reward_interval": 4, "gold_labels": 300, "include_representation": True,
               "ngram_buckets": BUCKETS}
    vector = gym.make_vec(LITE, num_envs=N, vectorization_mode="vector_entry_point", **options)
    reference = gym.vector.SyncVectorEnv([lambda: gym.make(LITE, **options) for _ in range(N)])

    def assert_equal(result: tuple, expected: tuple, where: str) -> None:
        for key in expected[0]:
            np.testing.assert_array_equal(result[0][key], expected[0][key], err_msg=f"{where}: {key}")
        if len(expected) == 5:
            np.testing.assert_array_equal(result[3], expected[3], err_msg=f"{where}: truncated")
            np.testing.assert_allclose(result[1], expected[1], atol=1e-6, rtol=0, err_msg=f"{where}: rewards")
            stepped = expected[4].get("_weights", np.zeros(N, dtype=bool))  # none on an autoreset of all
            np.testing.assert_array_equal(result[4].get("_weights", np.zeros(N, dtype=bool)), stepped,
                                          err_msg=f"{where}: info mask _weights")
            if stepped.any():
                np.testing.assert_array_equal(result[4]["weights"][stepped], expected[4]["weights"][stepped],
                                              err_msg=f"{where}: info weights")

    assert_equal(vector.reset(seed=11), reference.reset(seed=11), "reset")
    rng = np.random.default_rng(0)
    rewarded = 0
    for t in range(22):  # autoreset after step 9; a masked reset at step 13
        if t == 13:
            mask = np.arange(N) % 5 == 1
            seeds = [100 + n if m else None for n, m in enumerate(mask)]
            assert_equal(vector.reset(seed=seeds, options={"reset_mask": mask}),
                         reference.reset(seed=seeds, options={"reset_mask": mask.copy()}), "masked reset")
        actions = rng.random((N, B, K), dtype=np.float32)
        result = vector.step(actions)
        assert_equal(result, reference.step(actions), f"step {t}")
        rewarded += int(np.count_nonzero(result[1]))
    assert rewarded > N  # the comparison saw real rewards
    assert len(set(vector.student_steps.tolist())) > 1  # AdamW with different step counts per student
    for n, single in enumerate(reference.envs):
        for name, value in single.unwrapped.trainer.model.state_dict().items():
            assert torch.equal(vector.student_state_dict(n)[name], value), f"student {n}: {name}"
