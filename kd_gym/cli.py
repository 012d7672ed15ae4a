"""The ``kd-gym`` command line.

``kd-gym teachers build`` lives here; commands that need agents (``train``, ``demo``, ``bench``) are plugged in
through the entry-point group ``kd_gym.commands`` by the ``agents`` package, so the environment library never
imports agents.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import entry_points

COMMAND_GROUP = "kd_gym.commands"


def _teachers_build(args: argparse.Namespace) -> int:
    from kd_gym.pool_build import build_default_pool, default_pool_dir, format_manifest

    started = time.perf_counter()
    manifest = build_default_pool(args.task, out_dir=args.out, seed=args.seed, force=args.force,
                                  device=args.device, precision=args.precision)
    print(format_manifest(manifest))
    print(f"\npool written to {args.out or default_pool_dir(args.task)} in {time.perf_counter() - started:.0f} s")
    return 0


def _teachers_show(args: argparse.Namespace) -> int:
    import json

    from kd_gym.pool_build import default_pool_dir, format_manifest

    manifest = default_pool_dir(args.task) / "pool.json"
    if not manifest.exists():
        print(f"no pool built for {args.task!r}; run `kd-gym teachers build --task {args.task}`", file=sys.stderr)
        return 1
    print(format_manifest(json.loads(manifest.read_text())))
    return 0


def add_teachers_command(commands: argparse._SubParsersAction) -> None:
    teachers = commands.add_parser("teachers", help="build or show the default teacher pool")
    sub = teachers.add_subparsers(dest="teachers_command", required=True)
    build = sub.add_parser("build", help="fine-tune the default, deliberately diverse teacher pool and cache its logits",
                           description="Fine-tune the default teachers from the packaged MiniLM weights, cache their "
                                       "logits on every split, and print dev/test accuracy and disagreement.")
    build.add_argument("--task", default="tweets", help="task to build the pool for (default: tweets)")
    build.add_argument("--out", default=None, help="output folder (default: $KD_GYM_HOME/teachers/<task>)")
    build.add_argument("--seed", type=int, default=0, help="seed of the split and of fine-tuning")
    build.add_argument("--force", action="store_true", help="rebuild teachers that already exist")
    build.add_argument("--device", default="auto", help="auto | cpu | cuda")
    build.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    build.set_defaults(func=_teachers_build)
    show = sub.add_parser("show", help="print the built pool's accuracies and disagreement")
    show.add_argument("--task", default="tweets")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, for reports
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
