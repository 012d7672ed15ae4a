"""Weights & Biases tracking behind one ``--track`` flag; offline when no API key is configured."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def has_wandb_key() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY or an api.wandb.ai entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def run_name(task: str, agent: str, seed: int) -> str:
    """``{task}__{agent}__{seed}__{time}``, with characters W&B dislikes replaced."""
    return f"{task}__{agent}__{seed}__{int(time.time())}".replace("/", "-").replace(":", "-")


class Tracker:
    """One W&B run; a no-op when ``enabled`` is False.

    :param enabled: the ``--track`` flag.
    :param project, entity, group: W&B destinations.
    :param name: the run name.
    :param config: logged as the run config.
    """

    def __init__(self, enabled: bool, *, project: str = "kd-gym", entity: str | None = None, group: str | None = None,
                 name: str | None = None, config: dict[str, Any] | None = None, directory: str | Path | None = None) -> None:
        self.run = None
        if not enabled:
            return
        import wandb

        mode = os.environ.get("WANDB_MODE")
        if mode is None and not has_wandb_key():
            mode = "offline"
            print("wandb: no API key configured, logging offline; upload later with `wandb sync <run folder>`",
                  file=sys.stderr)
        self.run = wandb.init(project=project, entity=entity, group=group, name=name, config=config or {},
                              mode=mode, dir=str(directory) if directory else None, reinit="finish_previous")

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(record, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish()
