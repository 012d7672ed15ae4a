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
