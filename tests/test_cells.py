"""agents.experiments.cells: what identifies a bench cell, so a rerun skips what is done and runs what changed."""

from __future__ import annotations

from agents.experiments.cells import cell_config_hash
from kd_gym.cli import build_parser


def test_an_sb3_cell_is_stale_once_the_hyperparameter_entry_it_reads_changes(tmp_path):
    yml = tmp_path / "ppo.yml"
    yml.write_text("default:\n  policy: MlpPolicy\n  n_steps: 4\n")
    args = build_parser().parse_args(["bench", "--agents", "ppo,uniform", "--hyperparams-file", str(yml)])
    before = {agent: cell_config_hash(args, agent) for agent in ("ppo", "uniform")}
    yml.write_text("default:\n  policy: MlpPolicy\n  n_steps: 8\n")  # the same path, another entry
    assert cell_config_hash(args, "ppo") != before["ppo"]
    assert cell_config_hash(args, "uniform") == before["uniform"]  # reads no yml
    yml.write_text("default:\n  policy: MlpPolicy\n  n_steps: 4\n")
    assert cell_config_hash(args, "ppo") == before["ppo"]


def test_a_cell_of_an_earlier_default_student_is_not_taken_for_the_sgd_default():
    updates = ([], ["--ngram-update", "dense"], ["--ngram-update", "sparse"], ["--ngram-update", "sgd"])
    default, *explicit = (build_parser().parse_args(["bench", *extra]) for extra in updates)
    for args in (default, *explicit):
        args.scenario = "default"  # as bench() sets it before hashing
    hashes = {cell_config_hash(a, "uniform") for a in (default, *explicit)}
    # the earlier defaults' hashes: a dense student, then the sparse one (lazy AdamW)
    assert cell_config_hash(default, "uniform") not in {"a5706ef35450", "b7606ae9716e"}
    assert len(hashes) == 4
