"""Exact, cheaper rewards for SDPG's clone stepping (:class:`~distdrq.envs.clones.TaskPhysics`).

SDPG steps every clone through ``task.get_reward(physics)`` at every control step: 163,840
calls per iteration of the 8 x 15 x 32 cheetah_run window at action repeat 2. dm_control's
rewards read the state through ``physics.named`` (a string lookup per call) and score it with
``rewards.tolerance``, written for arrays; together that was about a quarter of an iteration's
time on a CPU. For the tasks below, :func:`fast_reward` returns a function of the physics that
computes the same reward from precomputed MuJoCo indices with the same float64 operations, in
the same order (``np.exp`` where dm_control uses it), so its value is dm_control's bit for bit
(``tests/unit/test_fast_rewards.py`` compares them on thousands of states, fallen and upright).
Any other task keeps ``task.get_reward``, and so does every task under a dm-control release
the exactness test has not passed on (:data:`VERIFIED_DM_CONTROL`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

Reward = Callable[[Any], float]
"""reward(physics): the task's reward for that Physics' current state"""


def _tolerance(lower: float, upper: float, margin: float, sigmoid: str, value_at_margin: float):
    """``dm_control.utils.rewards.tolerance`` for a scalar and ``margin > 0``, as a function of
    x with its constants computed once (``gaussian`` and ``linear`` sigmoids)."""
    if not (lower <= upper and margin > 0):
        raise ValueError("a fast tolerance needs lower <= upper and margin > 0")
    if sigmoid == "gaussian":
        scale = np.sqrt(-2 * np.log(value_at_margin))

        def gaussian(x: float) -> float:
            if lower <= x <= upper:
                return 1.0
            d = (lower - x if x < lower else x - upper) / margin
            return float(np.exp(-0.5 * (d * scale) ** 2))

        return gaussian
    if sigmoid == "linear":
        scale = 1 - value_at_margin

        def linear(x: float) -> float:
            if lower <= x <= upper:
                return 1.0
            scaled = (lower - x if x < lower else x - upper) / margin * scale
            return float(1 - scaled) if abs(scaled) < 1 else 0.0

        return linear
    raise ValueError(f"no fast tolerance for sigmoid {sigmoid!r}")


def _sensor_adr(physics: Any, name: str) -> int:
    model = physics.model
    return int(model.sensor_adr[model.name2id(name, "sensor")])


def _cheetah(task: Any, physics: Any) -> Reward:
    from dm_control.suite import cheetah

    speed = _sensor_adr(physics, "torso_subtreelinvel")  # physics.speed(): its x component
    run = _tolerance(cheetah._RUN_SPEED, float("inf"), cheetah._RUN_SPEED, "linear", 0)
    return lambda p: run(p.data.sensordata[speed])


def _walker(task: Any, physics: Any) -> Reward:
    from dm_control.suite import walker

    torso = int(physics.model.name2id("torso", "body"))
    velocity = _sensor_adr(physics, "torso_subtreelinvel")
    standing = _tolerance(
        walker._STAND_HEIGHT, float("inf"), walker._STAND_HEIGHT / 2, "gaussian", 0.1
    )
    move_speed = task._move_speed

    def stand(p: Any) -> Any:
        data = p.data
        upright = (1 + data.xmat[torso, 8]) / 2  # xmat['torso', 'zz']
        return (3 * standing(data.xpos[torso, 2]) + upright) / 4  # xpos['torso', 'z']

    if move_speed == 0:
        return stand
    move = _tolerance(move_speed, float("inf"), move_speed / 2, "linear", 0.5)
    return lambda p: stand(p) * (5 * move(p.data.sensordata[velocity]) + 1) / 6


_BUILDERS: dict[str, Callable[[Any, Any], Reward]] = {
    "dm_control.suite.cheetah.Cheetah": _cheetah,
    "dm_control.suite.walker.PlanarWalker": _walker,
}


VERIFIED_DM_CONTROL = ("1.0.50",)
"""dm-control releases on which tests/unit/test_fast_rewards.py found these rewards equal to
dm_control's; under another one the test fails, naming the release to add here once it passes"""


@functools.cache
def dm_control_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dm-control")
    except PackageNotFoundError:
        return "unknown"


def fast_reward(task: Any, physics: Any, verified_only: bool = True) -> Reward | None:
    """The exact fast reward of ``task`` for physics of ``physics``' model, or None (use
    ``task.get_reward``). The returned function takes the Physics to score, which may be any
    copy sharing that model (a clone). ``verified_only=False`` builds it under any dm-control
    release (for the test that compares them)."""
    if verified_only and dm_control_version() not in VERIFIED_DM_CONTROL:
        return None
    kind = type(task)
    builder = _BUILDERS.get(f"{kind.__module__}.{kind.__qualname__}")
    return builder(task, physics) if builder is not None else None
