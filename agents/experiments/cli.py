"""``kd-gym train``, ``bench``, ``demo`` and ``report``, plugged into the ``kd-gym`` command through the entry-point group
``kd_gym.commands`` (so the environment library never imports agents).

The parsers live here; the runs behind them in :mod:`agents.experiments.common` (one run) and
:mod:`agents.experiments.bench` (agents x seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.experiments.bench import (
    AUTO_JOBS_MIN_STEPS,
    BENCH_DEFAULTS,
    DEMO_DEFAULTS,
    MAX_AUTO_JOBS,
    bench,
    demo,
)
from agents.experiments.common import HelpFormatter, add_run_command, run_one
from agents.experiments.flags import SET_BY_RUN_FLAGS, non_negative_int, positive_int, seed_list


def _speaks_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser``, told the flags of the env options that have none of their own (``episode_steps`` -> ``--steps``),
    so that an error naming the option names the flag (:func:`kd_gym.cli.speak_flags`)."""
    parser.keyword_flags = dict(SET_BY_RUN_FLAGS)
    return parser


def _train(args: argparse.Namespace) -> int:
    from agents.experiments.tracking import run_name

    out = Path(args.out) if args.out else Path("runs") / "train" / run_name(args.task, args.agent, args.seed)
    every = args.checkpoint_every or max(1, args.steps // 10)
    result = run_one(args, args.agent, args.seed, out, checkpoint_every=every)
    line = {k: v for k, v in result.summary().items() if k != "agent_metrics"}
    print(json.dumps({**line, "out": str(out)}))
    return 0


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from agents import available_agents

    parser.add_argument("--agent", default="uniform",
                        help=f"agent: {', '.join(available_agents())}, or a package.module:Class path")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the student init, batch order and agent")
    parser.add_argument("--out", default=None,
                        help="run folder (default: runs/train/<task>__<agent>__<seed>__<time>); rerun a killed "
                             "command with the same --out to resume it from its last checkpoint")
    parser.add_argument("--checkpoint-every", "--checkpoint_every", type=positive_int, default=None,
                        metavar="STEPS",
                        help="checkpoint the run into --out every this many student updates (default: steps / 10). "
                             "Fixed agents and reinforce resume exactly (the same final line); SB3 agents (ppo, a2c, "
                             "sac, td3) resume approximately: the student and the networks continue, their rollout "
                             "or replay buffer and random streams start afresh")


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """``kd-gym train``: one student under one agent."""
    _speaks_flags(add_run_command(
        commands, "train", _train, help="train one student under one agent and report dev/test metrics",
        description="Train one student for --steps updates while the agent chooses the teacher weights (and learns); "
                    "evaluate the final student on dev and test; print one JSON line and write it, with the agent "
                    "and student checkpoints, to the run folder. The run checkpoints into its folder as it goes: "
                    "the same command run again after a crash resumes from the last checkpoint.",
        own_flags=_train_flags, agents_dest="agent",
    ))


def _bench_flags(defaults: dict[str, str]):
    """The flags of a bench with these defaults (``agents``, ``seeds``, ``out``)."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--agents", default=defaults["agents"],
                            help="comma-separated agent names (any --agent of kd-gym train)")
        parser.add_argument("--seeds", type=seed_list, default=defaults["seeds"],
                            help="comma-separated seeds (integers >= 0)")
        parser.add_argument("--out", default=defaults["out"],
                            help="output folder (rerun with the same folder to resume)")
        parser.add_argument("--force", action="store_true",
                            help="run this command's cells again even where results.csv has them (their rows are "
                                 "replaced); narrow --agents and --seeds to rerun fewer")
        parser.add_argument("--jobs", type=non_negative_int, default=0, metavar="N",
                            help="run the missing cells in N worker processes (0: one per CPU core, at most "
                                 f"{MAX_AUTO_JOBS}, for the lite env on a machine without CUDA, where a cell runs on "
                                 f"one torch thread, and --steps >= {AUTO_JOBS_MIN_STEPS}; 1 otherwise: a worker "
                                 "takes seconds to start); a cell's result does not depend on N")
        parser.add_argument("--no-oracle", dest="oracle_row", action="store_false",
                            help="do not add the scenario's oracle row")
        parser.add_argument("--emit-sweep", "--emit_sweep", default=None, metavar="FILE",
                            help="run nothing; write the (agent, seed) grid of this command as a W&B sweep file "
                                 "(method grid, one cell per run, every flag of this command kept) for wandb sweep "
                                 "+ wandb agent on any number of machines; merge the cells with kd-gym report")
        parser.add_argument("--cell", default=None, metavar="AGENT@SEED",
                            help="run only this cell of the grid (e.g. uniform@0) into OUT/cells/AGENT__SEED/ and "
                                 "write its row to results.csv there, not to OUT/results.csv (what each run of an "
                                 "--emit-sweep grid does); kd-gym report OUT merges the cells")

    return add


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    """``kd-gym bench``: agents x seeds, resumable."""
    _speaks_flags(add_run_command(
        commands, "bench", bench,
        help="compare agents over seeds: results.csv/.md, curves.png, weights.png (resumable)",
        description="Train one student per (agent, seed) cell with the same budget and compare agents: mean ± std "
                    "and 95%% CI of the test metric, a paired comparison against uniform, learning curves and "
                    "learned weights. By default each cell follows the train-eval protocol: a learning agent learns over "
                    "--train-students students, then its frozen policy trains --eval-students fresh students on "
                    "unseen seeds, whose mean is the cell's result (--protocol online: the paper's joint training). "
                    "Rerunning the same command skips finished cells.",
        own_flags=_bench_flags(BENCH_DEFAULTS), agents_dest="agents",
    )).set_defaults(protocol=BENCH_DEFAULTS["protocol"])


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """``kd-gym demo``: the bench preset that shows the main result on the default pool."""
    _speaks_flags(add_run_command(
        commands, "demo", demo,
        help="the main job: build the default teachers if needed, then compare teacher weightings",
        description="A preset of kd-gym bench: build the default teacher pool if it is not cached, then train lite "
                    "students on the task under fixed weightings (no KD, equal weights, the best single teacher, "
                    "per-instance confidence), the privileged oracle, and learned ones (REINFORCE, PPO) for the "
                    "same number of student steps; write and print the bench's tables, margins and plots "
                    "(resumable, like bench). It uses the online protocol (the paper's joint training: one student per "
                    "cell, quick) unless --protocol train-eval is given.",
        own_flags=_bench_flags(DEMO_DEFAULTS), agents_dest="agents",
    )).set_defaults(protocol=DEMO_DEFAULTS["protocol"])


def add_report_command(commands: argparse._SubParsersAction) -> None:
    """``kd-gym report``: the tables and figures of finished cells merged from several places."""
    parser = commands.add_parser(
        "report", help="merge finished bench cells from several results.csv files or folders into one report",
        description="Read the finished (agent, seed) cells of kd-gym bench runs (results.csv files, bench folders "
                    "and the cell folders of --cell runs, e.g. a grid run with --emit-sweep on several machines) "
                    "and write the results.md, curves.png and weights.png that one bench of those cells writes. "
                    "Over several scenarios, results.md starts with the scores aggregated over them.",
        formatter_class=HelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a results.csv file, or a bench's --out folder (its results.csv and cells/*/results.csv)")
    parser.add_argument("--out", required=True,
                        help="folder for results.md, curves.png, weights.png and results-merged.csv (the rows "
                             "behind them, with the file each came from)")
    parser.add_argument("--config-hash", "--config_hash", action="append", default=None, metavar="HASH",
                        help="report only rows of this config_hash (repeat for several); needed when a results.csv "
                             "keeps rows of an earlier config of the same agent")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from agents.experiments.grid import report

    return report(args)
