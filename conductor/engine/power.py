"""The power workflow: send a command, then poll until the BMC agrees.

A job never sleeps through a BMC's transition: it sends the command,
checks once, and if the node is not there yet it returns a
:class:`~conductor.drivers.base.Poll`; the conductor re-runs the step when
the poll is due, doubling the interval up to ``power_poll_max``.

``rebooting`` is two phases (off, then on) so that polling clients see the
node go down and come back; a node already in a phase's state skips it.
``soft power off`` falls back to a hard power off when the OS ignores
ACPI for ``soft_power_off_timeout`` seconds, if ``soft_power_off_fallback``
is set.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from conductor.core import states
from conductor.drivers.base import DONE, Poll, StepResult
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState as P

if TYPE_CHECKING:
    from conductor.engine.task import Task

#: The commands each target sends, in order.
PHASES: dict[str, tuple[P, ...]] = {
    P.POWER_ON: (P.POWER_ON,),
    P.POWER_OFF: (P.POWER_OFF,),
    P.SOFT_POWER_OFF: (P.SOFT_POWER_OFF,),
    P.REBOOTING: (P.POWER_OFF, P.POWER_ON),
}
#: The state the BMC reports once a command is done.
RESULT = {P.POWER_ON: P.POWER_ON, P.POWER_OFF: P.POWER_OFF, P.SOFT_POWER_OFF: P.POWER_OFF}


def observe(task: Task, state: P | None) -> None:
    """Record the power state the hardware reports (history and callbacks on change)."""
    states.observe_power(task.session, task.node, state, task.request, task.conductor)


def _send(task: Task, command: P, progress: dict[str, object]) -> None:
    task.driver.power.set_power_state(task, command)
    progress.update(sent_at=time.time(), command=str(command), interval=None)
    task.record("power.command", f"Sent {command}.")


def step(task: Task) -> StepResult:
    """Run the power request of ``task`` as far as it can go now.

    :raises DriverError: the hardware failed or never reached the target.
    """
    settings = task.settings
    phases = PHASES[task.request.target]
    progress = task.progress
    # The state read in this step when a phase ended: the next phase starts
    # from it instead of asking the BMC again a millisecond later.
    known: P | None = None
    while progress.get("phase", 0) < len(phases):
        command = phases[progress.get("phase", 0)]
        want = RESULT[command]
        task.request.step = f"{command}"
        if "sent_at" not in progress:
            current = known if known is not None else task.driver.power.get_power_state(task)
            observe(task, current)
            if current == want:
                _next_phase(progress)
                continue
            _send(task, command, progress)
        # Check at once: a fast BMC is done without a continuation.
        current = task.driver.power.get_power_state(task)
        observe(task, current)
        if current == want:
            _next_phase(progress)
            known = current
            continue
        elapsed = time.time() - progress["sent_at"]
        if progress.get("command") == P.SOFT_POWER_OFF and elapsed > settings.soft_power_off_timeout:
            if not settings.soft_power_off_fallback:
                raise DriverError(
                    f"Node reports {current or 'unknown'} {elapsed:.0f} s after soft power off "
                    "was sent (the OS ignored ACPI; fall back to hard power off is disabled)."
                )
            _send(task, P.POWER_OFF, progress)
            return Poll(settings.power_poll_initial, "hard power off after soft power off timed out")
        if elapsed > settings.power_timeout:
            raise DriverError(
                f"Node reports {current or 'unknown'} {elapsed:.0f} s after "
                f"{progress.get('command')} was sent (timeout {settings.power_timeout:g} s)."
            )
        interval = progress.get("interval") or settings.power_poll_initial / 2
        interval = min(interval * 2, settings.power_poll_max)
        progress["interval"] = interval
        return Poll(interval, f"waiting for {want}")
    return DONE


def reach(task: Task, want: P, progress: dict[str, object]) -> Poll | None:
    """Bring the node to power state ``want`` (on or off) as part of another workflow.

    Sends the command once (unless the node is there already), then checks;
    returns None once the BMC reports ``want``, else the :class:`Poll` to
    come back with.  ``progress`` is the caller's continuation for this
    phase.

    :raises DriverError: the BMC failed or did not get there within ``power_timeout``.
    """
    settings = task.settings
    if "sent_at" not in progress:
        current = task.driver.power.get_power_state(task)
        observe(task, current)
        if current == want:
            return None
        _send(task, want, progress)
    current = task.driver.power.get_power_state(task)
    observe(task, current)
    if current == want:
        return None
    elapsed = time.time() - float(progress["sent_at"])  # type: ignore[arg-type]
    if elapsed > settings.power_timeout:
        raise DriverError(
            f"Node reports {current or 'unknown'} {elapsed:.0f} s after {want} was sent "
            f"(timeout {settings.power_timeout:g} s)."
        )
    interval = min(float(progress.get("interval") or settings.power_poll_initial / 2) * 2,  # type: ignore[arg-type]
                   settings.power_poll_max)
    progress["interval"] = interval
    return Poll(interval, f"waiting for {want}")


def _next_phase(progress: dict[str, object]) -> None:
    progress["phase"] = int(progress.get("phase", 0)) + 1  # type: ignore[call-overload]
    for key in ("sent_at", "command", "interval"):
        progress.pop(key, None)


def fail(task: Task, message: str) -> None:
    """Record a failed power request on the node."""
    task.node.last_error = message
