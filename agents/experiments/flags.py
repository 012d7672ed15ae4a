"""Flat, typed command-line flags generated from dataclasses: the env's :class:`kd_gym.EnvConfig` and the agents'
``Config`` classes.

Every hyperparameter is one flag, so a W&B sweep can set any of them. A field's flag is ``--a-b`` with the alias
``--a_b`` (W&B sweeps write parameter names with underscores); its type comes from the annotation and its help
from the string under the field. Every flag defaults to None, so an unset flag keeps the env's or the agent's own
default. A flag shared by several agents (say ``--learning-rate``) is one flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from kd_gym.config import EnvConfig, dataclass_field_docs

FLAG_TYPES = (int, float, str, bool)
# EnvConfig fields set by the run flags of kd-gym train / bench / demo rather than by a flag of their own:
# --task and --teachers (a comma-separated string) are defined with the run flags, --steps sets episode_steps and
# --env sets student.
SET_BY_RUN_FLAGS = {"task": "--task", "teachers": "--teachers", "episode_steps": "--steps", "student": "--env"}


def flag_type(annotation: Any) -> type:
    """The type of a field's flag: ``int``, ``float``, ``str`` or ``bool``; in a union, its first member among
    these (``float | None`` -> float); anything else is read as ``str``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a in FLAG_TYPES]
        return members[0] if members else str
    return annotation if annotation in FLAG_TYPES else str


class _ExplicitNone:
    """What ``--option none`` parses to: an explicit None, told apart from an unset flag (which is None)."""

    def __repr__(self) -> str:
        return "none"

    def __reduce__(self) -> str:
        return "EXPLICIT_NONE"  # unpickles as this module's one instance, so `is EXPLICIT_NONE` holds in a worker


EXPLICIT_NONE = _ExplicitNone()


def none_or(kind: type):
    """An argparse type for an optional option: ``none`` gives :data:`EXPLICIT_NONE`, anything else ``kind(text)``."""

    def parse(text: str):
        return EXPLICIT_NONE if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def flag(name: str) -> str:
    """The flag of field ``name``: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def add_typed_flag(group, name: str, kind: type, help_text: str) -> None:
    """``--a-b`` (and the alias ``--a_b``) typed as ``kind``, default None; booleans get ``--no-a-b`` too.

    :param group: the parser or argument group to add it to.
    :param name: the field name (``a_b``), also the flag's dest.
    :param kind: ``int``, ``float``, ``str`` or ``bool`` (see :func:`flag_type`).
    :param help_text: the help line (plain text; ``%`` is escaped here).
    """
    options = [flag(name)] + ([f"--{name}"] if "_" in name else [])
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    if kind is bool:
        group.add_argument(*options, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        group.add_argument(*options, dest=name, type=kind, default=None, help=help_text,
                           metavar=kind.__name__.upper())


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a budget, an interval)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (a seed, a thread count)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer >= 0")
    return value


def seed_list(text: str) -> str:
    """An argparse type: comma-separated seeds (integers >= 0), kept as the text given (``0,1,2``)."""
    seeds = [part for part in text.split(",") if part.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed; use comma-separated integers >= 0, e.g. 0,1,2")
    for part in seeds:
        try:
            non_negative_int(part.strip())
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"seed {part.strip()!r} in {text!r} is invalid; use comma-separated "
                                             "integers >= 0, e.g. 0,1,2") from None
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def env_flag_fields() -> list[dataclasses.Field]:
    """The fields of :class:`EnvConfig` that get a generated flag (the CLI ones not set by a run flag)."""
    return [f for f in EnvConfig.cli_fields() if f.name not in SET_BY_RUN_FLAGS]


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per env option (see :func:`env_flag_fields`), help from the option's documentation."""
    group = parser.add_argument_group("environment (see docs/env.md)")
    docs, hints = EnvConfig.field_docs(), typing.get_type_hints(EnvConfig)
    for field in env_flag_fields():
        kind = flag_type(hints[field.name])
        optional = type(None) in typing.get_args(hints[field.name]) and _default(field) is not None
        if optional:  # e.g. --gold-labels none: every label (the default is a number)
            add_typed_flag(group, field.name, none_or(kind),
                           f"{docs.get(field.name, '')} (default: {_default(field)}; 'none' for None)")
        else:
            add_typed_flag(group, field.name, kind, f"{docs.get(field.name, '')} (default: {_default(field)})")


def agent_fields(agent_classes: list[type]) -> dict[str, tuple[type, str, list[str]]]:
    """Field name -> (flag type, help, names of the agents that have it), over the agents' ``Config`` dataclasses
    (``seed`` excluded: it is the run's ``--seed``)."""
    fields: dict[str, tuple[type, str, list[str]]] = {}
    for cls in agent_classes:
        docs, hints = dataclass_field_docs(cls.Config), typing.get_type_hints(cls.Config)
        for field in dataclasses.fields(cls.Config):
            if field.name == "seed":
                continue
            if field.name in fields:
                if cls.name not in fields[field.name][2]:
                    fields[field.name][2].append(cls.name)
                continue
            help_text = f"{docs.get(field.name, '')} (default: {_default(field)})".strip()
            fields[field.name] = (flag_type(hints[field.name]), help_text, [cls.name])
    return fields


def agent_fields_of(agent_class: type) -> list[str]:
    """The hyperparameters ``agent_class`` accepts from the command line (its Config fields but ``seed``)."""
    return [f.name for f in dataclasses.fields(agent_class.Config) if f.name != "seed"]


def collect(args: argparse.Namespace, names) -> dict[str, Any]:
    """The flags among ``names`` that were given (not None); ``--x none`` gives ``x=None``."""
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return {n: (None if value is EXPLICIT_NONE else value) for n, value in given.items()}


def hyperparameter_table(config_class: type) -> str:
    """A markdown table of a ``Config`` dataclass: field, type, default and the string under the field (as in
    docs/agents.md; every field but ``seed`` is the flag ``--field-name``, ``seed`` is the run's ``--seed``)."""
    docs = dataclass_field_docs(config_class)
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(config_class):
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        cells = [f"`{field.name}`", kind, f"`{_default(field)!r}`", docs.get(field.name, "")]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
