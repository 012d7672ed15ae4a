"""Flat, typed command-line flags generated from the agents' ``Config`` dataclasses and the env's options.

Every hyperparameter is one flag, so a W&B sweep can set any of them. A flag shared by several agents (say
``--learning-rate``) is one flag; it is passed to the chosen agent only if that agent has the field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any

# Env options exposed as flags: name -> (type, help). Defaults come from kd_gym.default_config().
ENV_FLAGS: dict[str, tuple[type, str]] = {
    "scenario": (str, "default | noisy-teacher | specialists (see docs/benchmark.md)"),
    "batch_size": (int, "instances per step (B)"),
    "alpha": (float, "weight of the gold-label CE in the KD loss"),
    "temperature": (float, "KD temperature T"),
    "lr": (float, "student learning rate (default: 1e-3 lite, 1e-4 full)"),
    "weight_decay": (float, "student AdamW weight decay"),
    "reward": (str, "reward: dev_delta | dev_loss_delta | neg_ce | neg_ce_kd | a registered name"),
    "reward_interval": (int, "student updates between dev measurements of interval rewards"),
    "reward_scale": (float, "multiplier of every reward"),
    "action_type": (str, "weights | select"),
    "dev_subset": (int, "dev instances used for rewards"),
    "split_seed": (int, "seed of the task's train/dev/test split"),
    "max_length": (int, "max tokens per input"),
    "student_checkpoint": (str, "full: encoder whose first layers make the student; lite: sentence encoder "
                                "(default: the packaged MiniLM)"),
    "student_layers": (int, "full student: transformer layers kept"),
    "lite_hidden": (int, "lite student: hidden units of the MLP head"),
    "include_representation": (bool, "append the student's pooled representation to the features"),
    "device": (str, "auto | cpu | cuda"),
    "precision": (str, "auto | bf16 | fp32"),
}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring literal under each dataclass field (``x: int = 1`` followed by ``\"\"\"help\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _base_type(annotation: Any) -> type:
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - annotations of our own dataclasses
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation if annotation in (int, float, str, bool) else str


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_typed_flag(group, name: str, kind: type, help_text: str, default: Any = None) -> None:
    """``--a-b`` (and the alias ``--a_b``, as W&B sweeps write parameter names) typed as ``kind``."""
    options = [flag(name)] + ([f"--{name}"] if "_" in name else [])
    if kind is bool:
        group.add_argument(*options, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    else:
        group.add_argument(*options, dest=name, type=kind, default=default, help=help_text, metavar=kind.__name__.upper())


def agent_fields(agent_classes: list[type]) -> dict[str, tuple[type, str, list[str]]]:
    """field name -> (type, help, agent names having it), over the agents' Config dataclasses (seed excluded)."""
    fields: dict[str, tuple[type, str, list[str]]] = {}
    for cls in agent_classes:
        docs = field_docs(cls.Config)
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            if f.name == "seed":
                continue
            kind = _base_type(hints.get(f.name, f.type))
            if f.name in fields:
                fields[f.name][2].append(cls.name)
            else:
                default = None if f.default is dataclasses.MISSING else f.default
                fields[f.name] = (kind, f"{docs.get(f.name, '')} (default: {default})".strip(), [cls.name])
    return fields


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("environment (see docs/env.md)")
    for name, (kind, help_text) in ENV_FLAGS.items():
        add_typed_flag(group, name, kind, help_text)


def add_agent_flags(parser: argparse.ArgumentParser, agent_classes: list[type]) -> dict[str, list[str]]:
    group = parser.add_argument_group("agent hyperparameters (each applies to the agents named in brackets)")
    owners = {}
    for name, (kind, help_text, names) in sorted(agent_fields(agent_classes).items()):
        add_typed_flag(group, name, kind, f"{help_text} [{', '.join(names)}]")
        owners[name] = names
    return owners


def collect(args: argparse.Namespace, names) -> dict[str, Any]:
    """The flags among ``names`` that were given (not None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
