"""kd-gym: learning which teacher to listen to in multi-teacher knowledge distillation, as a Gymnasium benchmark.

Importing the package registers ``kd_gym/TeacherSelection-v0`` (full student) and
``kd_gym/TeacherSelectionLite-v0`` (lite student); every option is a field of :class:`EnvConfig`. Their flat views
``kd_gym/TeacherSelectionFlat-v0`` and ``kd_gym/TeacherSelectionLiteFlat-v0`` (1-D observation, 1-D action in
[-1, 1]; :mod:`kd_gym.flat`) take the same options, for RL code written for flat spaces (CleanRL, RL Zoo).
``gymnasium.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=N)`` steps N lite students as one batched
computation (:mod:`kd_gym.vector`).
"""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

ENV_IDS = ("kd_gym/TeacherSelection-v0", "kd_gym/TeacherSelectionLite-v0")
#: the flat views of ENV_IDS, in the same order (kd_gym.flat)
FLAT_ENV_IDS = ("kd_gym/TeacherSelectionFlat-v0", "kd_gym/TeacherSelectionLiteFlat-v0")


def _register() -> None:
    for env_id, student in zip(ENV_IDS, ("full", "lite")):
        if env_id not in gym.registry:  # idempotent: importing twice (or reloading) is fine
            gym.register(id=env_id, entry_point="kd_gym.env:TeacherSelectionEnv", kwargs={"student": student},
                         vector_entry_point="kd_gym.vector:TeacherSelectionVectorEnv" if student == "lite" else None)
    for env_id, student in zip(FLAT_ENV_IDS, ("full", "lite")):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="kd_gym.flat:make_flat_env", kwargs={"student": student})


_register()

from kd_gym.config import EnvConfig, default_config  # noqa: E402
from kd_gym.env import TeacherSelectionEnv  # noqa: E402
from kd_gym.losses import multi_teacher_kd_loss  # noqa: E402
from kd_gym.rewards import Reward, register_reward  # noqa: E402

__all__ = ["ENV_IDS", "FLAT_ENV_IDS", "EnvConfig", "Reward", "TeacherSelectionEnv", "default_config",
           "multi_teacher_kd_loss", "register_reward"]
