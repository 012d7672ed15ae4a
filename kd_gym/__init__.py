"""kd-gym: learning which teacher to listen to in multi-teacher knowledge distillation, as a Gymnasium benchmark.

Importing the package registers ``kd_gym/TeacherSelection-v0`` (full student) and
``kd_gym/TeacherSelectionLite-v0`` (lite student); every option is a field of :class:`EnvConfig`. Their flat views
``kd_gym/TeacherSelectionFlat-v0`` and ``kd_gym/TeacherSelectionLiteFlat-v0`` (1-D observation, 1-D action in
[-1, 1]; :mod:`kd_gym.flat`) take the same options, for RL code written for flat spaces (CleanRL, RL Zoo).
``gymnasium.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=N)`` steps N lite students as one batched
computation (:mod:`kd_gym.vector`).

The per-instance ids ``kd_gym/TeacherRoutingLite-v0`` and ``kd_gym/TeacherRouting-v0`` (:mod:`kd_gym.routing`) are
vector envs with one sub-env per instance of a student's batch, made with ``gymnasium.make_vec(id, num_envs=B,
vectorization_mode="vector_entry_point")``; their reward is the env's reward (``return``), and their variants
``...StudentCredit-v0`` and ``...GoldCredit-v0`` give each instance its own reward tier (:mod:`kd_gym.credit`).
"""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

ENV_IDS = ("kd_gym/TeacherSelection-v0", "kd_gym/TeacherSelectionLite-v0")
#: the flat views of ENV_IDS, in the same order (kd_gym.flat)
FLAT_ENV_IDS = ("kd_gym/TeacherSelectionFlat-v0", "kd_gym/TeacherSelectionLiteFlat-v0")
#: the per-instance ids (kd_gym.routing): (student, reward tier) -> id; make them with gymnasium.make_vec
ROUTING_ENV_IDS = {
    (student, tier): f"kd_gym/TeacherRouting{'Lite' if student == 'lite' else ''}{suffix}-v0"
    for student in ("full", "lite")
    for tier, suffix in (("return", ""), ("student_credit", "StudentCredit"), ("gold_credit", "GoldCredit"))
}


def _register() -> None:
    for env_id, student in zip(ENV_IDS, ("full", "lite")):
        if env_id not in gym.registry:  # idempotent: importing twice (or reloading) is fine
            gym.register(id=env_id, entry_point="kd_gym.env:TeacherSelectionEnv", kwargs={"student": student},
                         vector_entry_point="kd_gym.vector:TeacherSelectionVectorEnv" if student == "lite" else None)
    for env_id, student in zip(FLAT_ENV_IDS, ("full", "lite")):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="kd_gym.flat:make_flat_env", kwargs={"student": student})
    for (student, tier), env_id in ROUTING_ENV_IDS.items():
        if env_id not in gym.registry:  # gym.make says to call make_vec; make_vec builds kd_gym.routing's env
            gym.register(id=env_id, entry_point="kd_gym.routing:refuse_single_env",
                         vector_entry_point="kd_gym.routing:make_routing_env",
                         kwargs={"student": student, "instance_reward": tier})


_register()

from kd_gym.config import EnvConfig, default_config  # noqa: E402
from kd_gym.env import TeacherSelectionEnv  # noqa: E402
from kd_gym.losses import multi_teacher_kd_loss  # noqa: E402
from kd_gym.rewards import Reward, register_reward  # noqa: E402

__all__ = ["ENV_IDS", "FLAT_ENV_IDS", "ROUTING_ENV_IDS", "EnvConfig", "Reward", "TeacherSelectionEnv", "default_config",
           "multi_teacher_kd_loss", "register_reward"]
