"""The ``fake`` driver: no hardware, observable timing, injectable failure.

``driver_info``:

* ``fake_delay`` (seconds, default 0): every action completes this long
  after it starts, so the asynchronous path can be watched;
* ``fake_fail`` (a message): every action fails with that message;
* ``fake_hang`` (seconds, default 0): every call blocks this long before it
  answers, like an unresponsive BMC (for exercising timeouts and crashes
  in the middle of a step).

The fake "BMC" keeps its power state in the node's ``driver_internal_info``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conductor.drivers import base
from conductor.drivers.pxe import PXEDeploy
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState

if TYPE_CHECKING:
    from conductor.engine.task import Task

MAX_DELAY = 3600.0

_FIELDS = {
    "fake_delay": base.Field("Seconds every action takes (default 0)."),
    "fake_fail": base.Field("If set, every action fails with this message."),
    "fake_hang": base.Field("Seconds every call blocks before answering (default 0)."),
}


def _delay(task: Task) -> float:
    return float(task.node.driver_info.get("fake_delay", 0) or 0)


def _check_fail(task: Task, action: str) -> None:
    hang = float(task.node.driver_info.get("fake_hang", 0) or 0)
    if hang > 0:
        time.sleep(hang)
    message = task.node.driver_info.get("fake_fail")
    if message:
        raise DriverError(f"fake driver: {action} failed: {message}")


class _Validating(base.Interface):
    fields: Mapping[str, base.Field] = _FIELDS

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        errors = super().validate(driver_info)
        for key in ("fake_delay", "fake_hang"):
            value = driver_info.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_DELAY:
                errors[key] = f"must be a number of seconds between 0 and {MAX_DELAY:g}"
        fail = driver_info.get("fake_fail")
        if fail is not None and not isinstance(fail, str):
            errors["fake_fail"] = "must be a string (the failure message)"
        return errors


class FakePower(_Validating, base.PowerInterface):
    """Power state kept in the node row; changes take ``fake_delay`` seconds."""

    def get_power_state(self, task: Task) -> PowerState | None:
        info = task.node.driver_internal_info
        pending = info.get("fake_power_target")
        if pending and time.time() >= info.get("fake_power_ready_at", 0):
            task.update_internal_info(
                fake_power=pending, fake_power_target=None, fake_power_ready_at=None
            )
            info = task.node.driver_internal_info
        return PowerState(info.get("fake_power", PowerState.POWER_OFF))

    def set_power_state(self, task: Task, state: PowerState) -> None:
        _check_fail(task, f"power {state}")
        final = PowerState.POWER_OFF if state == PowerState.SOFT_POWER_OFF else state
        task.update_internal_info(
            fake_power_target=str(final), fake_power_ready_at=time.time() + _delay(task)
        )

    def verify(self, task: Task) -> PowerState | None:
        _check_fail(task, "credential check")
        return self.get_power_state(task)


class FakeManagement(_Validating, base.ManagementInterface):
    """Boot device kept in the node row."""

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        info = task.node.driver_internal_info
        return {
            "boot_device": info.get("fake_boot_device", "disk"),
            "persistent": bool(info.get("fake_boot_persistent", True)),
        }

    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        _check_fail(task, f"set boot device {device}")
        task.update_internal_info(fake_boot_device=device, fake_boot_persistent=persistent)


class FakeDeploy(_Validating, base.DeployInterface):
    """Every step completes ``fake_delay`` seconds after it starts."""

    def _step(self, task: Task, name: str) -> base.StepResult:
        _check_fail(task, name)
        key = f"fake_{name}_ready_at"
        ready_at = task.progress.get(key)
        if ready_at is None:
            ready_at = time.time() + _delay(task)
            task.progress[key] = ready_at
        remaining = ready_at - time.time()
        return base.DONE if remaining <= 0 else base.Poll(remaining, f"fake {name}")

    def deploy(self, task: Task) -> base.StepResult:
        return self._step(task, "deploy")

    def tear_down(self, task: Task) -> base.StepResult:
        return self._step(task, "tear_down")

    def clean(self, task: Task) -> base.StepResult:
        return self._step(task, "clean")

    def inspect(self, task: Task) -> base.StepResult:
        result = self._step(task, "inspect")
        if isinstance(result, base.Done):
            task.update_properties(cpus=4, memory_mb=16384, local_gb=100, cpu_arch="x86_64")
        return result


def driver() -> base.Driver:
    """The fake driver (deploy interface ``fake`` by default; ``pxe`` drives the agent protocol)."""
    deploy = FakeDeploy()
    return base.Driver(
        name="fake", power=FakePower(), management=FakeManagement(), deploy=deploy,
        deploy_interfaces={"fake": deploy, "pxe": PXEDeploy()},
    )
