"""The management workflow: set a node's boot device, and remember what the BMC says.

A ``management`` request's target is the boot device (``pxe``, ``disk``,
``cdrom``, ``bios``) and its ``persistent`` parameter says whether it holds
for every boot or only the next one.  The step sends the command, then reads
the setting back; what was observed is kept in the node's
``driver_internal_info["boot_device"]`` with the time it was observed, which
is what ``GET /v1/nodes/<node>/management/boot_device`` shows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from conductor.drivers.base import DONE, StepResult
from conductor.engine.task import Task
from conductor.exceptions import BMCError, DriverError

#: The ``driver_internal_info`` key holding the last observed boot device.
INFO_KEY = "boot_device"


def record(task: Task, setting: dict[str, Any], source: str) -> None:
    """Remember ``setting`` (``boot_device``, ``persistent``) as observed now; ``source``: ``set`` or ``bmc``."""
    task.update_internal_info(**{INFO_KEY: {
        "boot_device": setting.get("boot_device"),
        "persistent": bool(setting.get("persistent")),
        "observed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source,
    }})


def step(task: Task) -> StepResult:
    """Set the boot device of the task's request, then read it back.

    :raises DriverError: the driver has no management interface, or the BMC failed.
    """
    management = task.driver.management
    if management is None:
        raise DriverError(f"Driver {task.node.driver} cannot set a boot device.")
    device = task.request.target
    persistent = bool((task.request.params or {}).get("persistent"))
    task.request.step = "set boot device"
    if not task.progress.get("sent"):
        management.set_boot_device(task, device, persistent)
        task.progress["sent"] = True
        task.record("management.boot_device",
                    f"Set boot device {device} ({'persistent' if persistent else 'next boot only'}).")
    task.request.step = "read boot device"
    try:
        record(task, management.get_boot_device(task), "bmc")
    except BMCError:
        # The command was accepted; a failed read-back only makes the record less sure.
        record(task, {"boot_device": device, "persistent": persistent}, "set")
    task.request.step = None
    return DONE


def fail(task: Task, message: str) -> None:
    """Record a failed management request on the node."""
    task.node.last_error = message
