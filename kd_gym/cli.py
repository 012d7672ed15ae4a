"""The ``kd-gym`` command line.

``kd-gym teachers build`` / ``show`` live here; commands that need agents (``train``, ``demo``, ``bench``) are
plugged in through the entry-point group ``kd_gym.commands`` by the ``agents`` package, so the environment library
never imports agents.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import typing
from importlib.metadata import entry_points

COMMAND_GROUP = "kd_gym.commands"


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`kd_gym.tasks.TaskOptions` (``--text-column`` ...), default None (unset)."""
    from kd_gym.config import dataclass_field_docs
    from kd_gym.tasks import TaskOptions

    group = parser.add_argument_group("custom tasks (local files and hub datasets; see docs/tasks-and-teachers.md)")
    docs, hints = dataclass_field_docs(TaskOptions), typing.get_type_hints(TaskOptions)
    for field in dataclasses.fields(TaskOptions):
        flags = ["--" + field.name.replace("_", "-"), "--" + field.name]
        kind = [t for t in typing.get_args(hints[field.name]) if t is not type(None)] or [hints[field.name]]
        help_text = f"{docs[field.name]} (default: {field.default})".replace("%", "%%")  # argparse formats help
        if kind[0] is bool:
            group.add_argument(*flags, dest=field.name, action="store_true", default=None, help=help_text)
        else:
            group.add_argument(*flags, dest=field.name, type=kind[0], default=None, help=help_text,
                               metavar=kind[0].__name__.upper())


def task_kwargs_from(args: argparse.Namespace) -> dict:
    """The task flags that were given, as keywords of :func:`kd_gym.tasks.load_task`."""
    from kd_gym.tasks import TaskOptions

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TaskOptions)
            if getattr(args, f.name, None) is not None}


def _teachers_build(args: argparse.Namespace) -> int:
    from kd_gym.prepare.pool_build import build_default_pool
    from kd_gym.prepare.pool_report import format_manifest

    if args.seed < 0:
        raise SystemExit(f"kd-gym teachers build: --seed {args.seed} is invalid; use a seed >= 0")
    if args.dry_run:
        from kd_gym.prepare.pool_plan import build_plan

        print(build_plan(args.task, pool=args.pool, seed=args.seed, task_kwargs=task_kwargs_from(args)))
        return 0
    started = time.perf_counter()
    manifest = build_default_pool(args.task, out_dir=args.out, pool=args.pool, seed=args.seed, force=args.force,
                                  device=args.device, precision=args.precision, task_kwargs=task_kwargs_from(args))
    print(format_manifest(manifest))
    print(f"\npool written to {manifest['folder']} in {time.perf_counter() - started:.0f} s")
    return 0


def _teachers_show(args: argparse.Namespace) -> int:
    from kd_gym.defaults import default_pool_dir
    from kd_gym.prepare.pool_report import format_manifest, pool_manifest
    from kd_gym.tasks import load_task

    task = load_task(args.task, seed=args.seed, **task_kwargs_from(args))
    folder = default_pool_dir(task, pool=args.pool)
    if not (folder / "pool.json").exists():
        print(f"no {args.pool} pool built for {args.task!r} with split seed {args.seed} (looked in {folder}); run "
              f"`kd-gym teachers build --task {args.task} --pool {args.pool} --seed {args.seed}`", file=sys.stderr)
        return 1
    print(format_manifest(pool_manifest(folder, task)))
    print(f"\n{folder}")
    return 0


def add_teachers_command(commands: argparse._SubParsersAction) -> None:
    teachers = commands.add_parser("teachers", help="build or show the default teacher pool of a task")
    sub = teachers.add_subparsers(dest="teachers_command", required=True)
    build = sub.add_parser(
        "build", help="fine-tune the default, deliberately diverse teacher pool and cache its logits",
        description="Train the default teachers of a task, cache their logits on every split, and print dev/test "
                    "accuracy and disagreement. The pool is stored under $KD_GYM_HOME/teachers, keyed by the content "
                    "of the task's splits (its rows and the split seed), with the list of rows its teachers saw.")
    for parser in (build, show := sub.add_parser("show", help="print a built pool's accuracies and disagreement")):
        parser.add_argument("--task", default="tweets", help="task name, hub dataset or local file (default: tweets)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the task's split (and of fine-tuning)")
        parser.add_argument("--pool", default="siloed", choices=("siloed", "generalist"),
                            help="siloed (default): one MiniLM expert per silo (the task's topic column, or k-means "
                                 "clusters) and a weak generalist; generalist: the earlier pool, a 3-layer generalist "
                                 "on every teacher row, a 1-layer one and TF-IDF silo specialists")
        add_task_flags(parser)
    build.add_argument("--out", default=None, help="output folder (default: $KD_GYM_HOME/teachers/<task>-<fingerprint>)")
    build.add_argument("--force", action="store_true", help="rebuild teachers that already exist")
    build.add_argument("--dry-run", action="store_true",
                       help="print what the build would do (silos, each teacher's rows and updates, the logits) and "
                            "about how long it would take on a 2-core CPU, without building anything")
    build.add_argument("--device", default="auto", help="auto | cpu | cuda")
    build.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    build.set_defaults(func=_teachers_build)
    build.keyword_flags = {"out_dir": "--out", "task_name": "--task"}  # build_default_pool's keywords (speak_flags)
    show.set_defaults(func=_teachers_show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kd-gym",
        description="kd-gym: learn which teacher to listen to in multi-teacher knowledge distillation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_teachers_command(commands)
    for entry_point in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        entry_point.load()(commands)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` were parsed for (``kd-gym teachers build`` -> its own)."""
    while True:
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, commands[0].dest, None) if commands else None
        if chosen not in (commands[0].choices if commands else {}):
            return parser
        parser = commands[0].choices[chosen]


_KEYWORD = re.compile(r"(?<![\w.'\"-])([A-Za-z_]\w*)=(?!=)('[^'\s]*'|\"[^\"\s]*\"|[^\s,;()\[\]{}]*)")


def speak_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` (an error of the Python API, which names keywords: ``pass text_column=...``) in the words of the
    command line: each ``keyword=value`` whose keyword is an option of ``parser`` becomes ``--flag value``
    (``--text-column ...``; a boolean flag alone for True: ``allow_rare_labels=True`` -> ``--allow-rare-labels``).
    Keywords that are no flag (``label_map=...``) are left as they are. ``parser.keyword_flags`` (a dict) may name
    the flag of a keyword that has none of its own (``episode_steps`` -> ``--steps``)."""
    flags: dict[str, tuple[str, argparse.Action | None]] = {}
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if long and action.dest not in flags:
            flags[action.dest] = (long[0], action)
    for keyword, flag in getattr(parser, "keyword_flags", {}).items():
        flags.setdefault(keyword, (flag, None))

    def replace(match: re.Match) -> str:
        keyword, value = match.group(1), match.group(2)
        if keyword not in flags:
            return match.group(0)
        flag, action = flags[keyword]
        end = "." if value.endswith(".") and not value.endswith("...") else ""
        value = value[: len(value) - len(end)]
        if value in ("True", "False") and action is not None and action.nargs == 0:
            if value == "True":
                return flag + end
            return (f"--no-{flag[2:]}" if isinstance(action, argparse.BooleanOptionalAction) else match.group(0)) + end
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{flag} {'none' if value == 'None' else value}" + end

    return _KEYWORD.sub(replace, message)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, for reports
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as error:  # a bad input: one line, not a traceback
        # the library's errors name Python keywords (text_column=...); here the caller typed flags (--text-column)
        print(f"kd-gym {args.command}: error: {speak_flags(str(error), command_parser(parser, args))}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
