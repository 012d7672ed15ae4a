"""What ``kd-gym train``, ``bench`` and ``demo`` share: the subcommand parser (run, env and agent flags), the env
and agent options read back from parsed flags, and one tracked (agent, seed) run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agents.experiments.flags import (
    add_env_flags,
    add_typed_flag,
    agent_fields,
    agent_fields_of,
    collect,
    env_flag_fields,
    flag,
    non_negative_int,
    positive_int,
)
from kd_gym.cli import add_task_flags, task_kwargs_from
from kd_gym.config import EnvConfig


def _resolve_agent(name: str) -> type:
    """The agent class of ``name``; ``ValueError`` naming the agent when it is not an :class:`agents.Agent`."""
    from agents import Agent, resolve

    agent_class, _ = resolve(name)
    if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
        raise ValueError(f"agent {name!r} resolves to {agent_class!r}, which is not a subclass of agents.Agent")
    return agent_class


def installed_agent_classes() -> list[type]:
    """The classes of every agent known without a ``module:Class`` path: built-ins, registered names and the
    entry-point group ``kd_gym.agents`` (a plug-in that fails to load is reported and left out)."""
    from agents import available_agents

    classes = []
    for name in available_agents():
        try:
            classes.append(_resolve_agent(name))
        except Exception as error:  # a broken plug-in must not break every command's --help
            print(f"kd-gym: agent {name!r} cannot be loaded, its flags are left out ({error})", file=sys.stderr)
    return classes


class RunParser(argparse.ArgumentParser):
    """The parser of a subcommand that trains students: its own flags, the run flags, the env flags and the agent
    flags (one per field of the agents' ``Config`` dataclasses, ``seed`` aside).

    The flags of built-in and entry-point agents are there from the start (so ``--help`` lists them). Before
    parsing, the agents named by ``--agent`` / ``--agents`` (``agents_dest``) are resolved with
    :func:`agents.resolve` and their fields added too, so a ``module:Class`` agent takes flags exactly like a
    built-in one. An agent flag that none of the named agents accepts is an error naming what they accept.
    """

    agents_dest = "agent"
    """the dest of the flag naming the agents to run (comma-separated)"""

    def add_agent_classes(self, agent_classes: list[type], skip_clashes: bool = False) -> None:
        """Add a flag for every field of these agents' ``Config`` that is not one already.

        :param skip_clashes: report and leave out an agent whose field's flag is a run or env flag (installed
            plug-ins, so that one cannot break every command); otherwise that is a ``ValueError``.
        """
        if not hasattr(self, "agent_flag_owners"):
            self.agent_flag_owners: dict[str, list[str]] = {}
            self._agent_help: dict[str, str] = {}
            self._agent_group = self.add_argument_group(
                "agent hyperparameters (each applies to the agents named in brackets)")
        usable = []
        for agent_class in agent_classes:
            clashes = [flag(n) for n in agent_fields([agent_class])
                       if n not in self.agent_flag_owners and flag(n) in self._option_string_actions]
            if not clashes:
                usable.append(agent_class)
                continue
            message = (f"agent {agent_class.name!r} ({agent_class.__module__}:{agent_class.__qualname__}) has "
                       f"hyperparameter(s) whose flags {clashes} are run or env flags of kd-gym; rename those "
                       "Config fields")
            if not skip_clashes:
                raise ValueError(message)
            print(f"kd-gym: {message}; its flags are left out", file=sys.stderr)
        for name, (kind, help_text, owners) in sorted(agent_fields(usable).items()):
            if name in self.agent_flag_owners:
                self.agent_flag_owners[name] += [o for o in owners if o not in self.agent_flag_owners[name]]
            else:
                self.agent_flag_owners[name], self._agent_help[name] = list(owners), help_text
                add_typed_flag(self._agent_group, name, kind, help_text)
        for action in self._agent_group._group_actions:  # the brackets name every agent having the field
            owners = ", ".join(self.agent_flag_owners[action.dest])
            action.help = f"{self._agent_help[action.dest]} [{owners}]".replace("%", "%%")
        self.set_defaults(_agent_flag_owners=self.agent_flag_owners)

    def named_agents(self, args: list[str]) -> list[str]:
        """The agent names given by ``--agent`` / ``--agents`` in ``args`` (or its default)."""
        first_pass = argparse.ArgumentParser(add_help=False)
        first_pass.add_argument(flag(self.agents_dest), dest="names", default=self.get_default(self.agents_dest))
        names, _ = first_pass.parse_known_args(args)
        return [name for name in (names.names or "").split(",") if name]

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        names = self.named_agents(args)
        try:
            classes = {name: _resolve_agent(name) for name in names}
            self.add_agent_classes(list(classes.values()))
        except (ValueError, ImportError) as error:  # an unknown name or path, a plug-in that is not an Agent
            self.error(str(error))
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)} (agent flags are the Config fields of the agents "
                       f"named by {flag(self.agents_dest)}: {', '.join(names)})")
        self._check_agent_flags(namespace, classes)
        return namespace, extras

    def _check_agent_flags(self, namespace: argparse.Namespace, classes: dict[str, type]) -> None:
        given = collect(namespace, self.agent_flag_owners)
        accepted = {name: agent_fields_of(cls) for name, cls in classes.items()}
        wrong = sorted(f for f in given if not any(f in fields for fields in accepted.values()))
        if wrong:
            which = "; ".join(f"{name!r} accepts {', '.join(flag(f) for f in fields) or 'no hyperparameter flags'}"
                              for name, fields in accepted.items())
            self.error(f"{', '.join(flag(w) for w in wrong)} does not apply to agent(s) {', '.join(accepted)}: {which}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except None (generated flags say the env's or the agent's own default) and that of
    switches such as ``--track`` (off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every run: student kind, task, budget, teachers, tracking, threads."""
    docs = {name: doc.replace("%", "%%") for name, doc in EnvConfig.field_docs().items()}
    parser.add_argument("--env", default="lite", choices=["lite", "full"], help=docs["student"])
    parser.add_argument("--task", default="tweets", help=docs["task"])
    parser.add_argument("--steps", type=positive_int, default=1500,
                        help=f"sets episode_steps: {docs['episode_steps']}")
    parser.add_argument("--teachers", default=None, help=docs["teachers"])
    parser.add_argument("--track", action="store_true", help="log to Weights & Biases (offline without an API key)")
    parser.add_argument("--wandb-project", default="kd-gym", help="W&B project")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (team or user)")
    parser.add_argument("--wandb-group", default=None, help="W&B group")
    parser.add_argument("--protocol", default="online", choices=["online", "train-eval"],
                        help="online: the agent learns while it trains the one student that is the result (the "
                             "paper); train-eval: it learns over --train-students students, then its frozen policy "
                             "trains --eval-students fresh students on unseen seeds, whose mean is the result")
    parser.add_argument("--train-students", "--train_students", type=positive_int, default=4, metavar="N",
                        help="train-eval: students (episodes of --steps updates) the agent learns over; agents that "
                             "learn nothing skip this phase")
    parser.add_argument("--eval-students", "--eval_students", type=positive_int, default=2, metavar="M",
                        help="train-eval: fresh students the frozen policy trains; the result is their mean")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads (0: 1 for the lite env on a CPU, whose tiny matmuls only lose from "
                             "more; torch's default otherwise)")


def add_run_command(commands: argparse._SubParsersAction, name: str, func, help: str, description: str,
                    own_flags, agents_dest: str) -> RunParser:
    """A subcommand that trains students: its own flags (``own_flags(parser)``, which must define
    ``--{agents_dest}``), then the run, env and agent flags.

    :param commands: the ``kd-gym`` subcommands.
    :param func: called with the parsed arguments; returns the exit code.
    :param agents_dest: ``agent`` (one agent) or ``agents`` (comma-separated).
    """
    # argparse builds a subcommand's parser with the class given to add_subparsers; this command needs a RunParser.
    default_class, commands._parser_class = commands._parser_class, RunParser
    try:
        parser = commands.add_parser(name, help=help, description=description,
                                     formatter_class=HelpFormatter)
    finally:
        commands._parser_class = default_class
    parser.agents_dest = agents_dest
    own_flags(parser)
    add_run_flags(parser)
    add_env_flags(parser)
    add_task_flags(parser)
    parser.add_agent_classes(installed_agent_classes(), skip_clashes=True)
    parser.set_defaults(func=func)
    return parser


def env_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """Env options given on the command line (unset flags keep the env's defaults); ``episode_steps`` aside. The
    task flags (``--text-column``, ...) become the option ``task_kwargs``."""
    kwargs = collect(args, [f.name for f in env_flag_fields()])
    kwargs["task"] = args.task
    if args.teachers:
        kwargs["teachers"] = [t for t in args.teachers.split(",") if t]
    task_kwargs = task_kwargs_from(args)
    if task_kwargs:
        kwargs["task_kwargs"] = task_kwargs
    return kwargs


def check_env_options(args: argparse.Namespace) -> None:
    """Validate the env options of the command before anything is built or written (``ValueError`` naming the
    option, its value and what is valid)."""
    EnvConfig(**env_kwargs_from(args), episode_steps=args.steps, student=args.env).validate()


def agent_kwargs_from(args: argparse.Namespace, agent: str) -> dict[str, Any]:
    """The agent hyperparameters given on the command line that ``agent`` accepts (the parser has checked that
    each given one applies to some agent of the run)."""
    accepted = set(agent_fields_of(_resolve_agent(agent)))
    return {k: v for k, v in collect(args, args._agent_flag_owners).items() if k in accepted}


def protocol_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """``protocol`` and, for train-eval, ``train_students`` and ``eval_students`` (:mod:`agents.experiments.protocol`)."""
    protocol = getattr(args, "protocol", "online")
    if protocol == "online":
        return {"protocol": protocol}
    return {"protocol": protocol, "train_students": args.train_students, "eval_students": args.eval_students}


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads (see its help)."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif args.env == "lite" and not torch.cuda.is_available():
        torch.set_num_threads(1)


def run_one(args: argparse.Namespace, agent: str, seed: int, out_dir: Path, built_env=None, progress: bool = True,
            checkpoint_every: int | None = None):
    """One tracked (agent, seed) run; returns the :class:`~agents.experiments.run.RunResult`.

    :param built_env: an env built from the same flags with ``episode_steps=args.steps``, reused across runs.
    :param checkpoint_every: checkpoint into ``out_dir`` every this many steps and resume from a checkpoint there
        (:mod:`agents.experiments.resume`); None: neither.
    """
    from agents.experiments.run import train_student
    from agents.experiments.tracking import Tracker, run_name

    check_env_options(args)
    set_threads(args)
    agent_kwargs = agent_kwargs_from(args, agent)
    env_kwargs = env_kwargs_from(args)
    config = {"agent": agent, "seed": seed, "env": args.env, "steps": args.steps, **env_kwargs, **agent_kwargs,
              **protocol_kwargs_from(args)}
    tracker = Tracker(args.track, project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
                      name=run_name(args.task, agent, seed), config=config, directory=out_dir)
    result = train_student(agent, env=args.env, steps=args.steps, seed=seed, env_kwargs=env_kwargs,
                           agent_kwargs=agent_kwargs, out_dir=out_dir, built_env=built_env, progress=progress,
                           on_record=lambda record: tracker.log(record, step=record["env_step"]),
                           checkpoint_every=checkpoint_every, **protocol_kwargs_from(args))
    tracker.finish({"dev_metric": result.dev_metric, "test_metric": result.test_metric, "wall_s": result.wall_s,
                    **{f"agent/{k}": v for k, v in result.extra.get("agent_metrics", {}).items()}})
    return result
