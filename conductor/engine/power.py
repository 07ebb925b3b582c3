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

The first poll after a hard power command comes when the BMC is expected
to be done, learned from the last time: the node's own figure
(``driver_internal_info["power_transition"]``, per target state), else
its driver's across the deployment (:func:`conductor.keys.power_transitions`),
at most ``power_poll_max``; else at ``power_poll_initial``.  A first poll
that finds the node there shortens the next guess by a quarter (it says
only that the node was there by then: a guess too long, from a
transition that was slow once, must come down fast); one that does not
falls back to polls from ``power_poll_initial``, doubling, and the time
they found the node there becomes the next guess.  A node done at the
check right after the command gets the figure 0: no guess, the doubling
polls from the shortest, and not its driver's figure.  At a BMC's steady
transition time this is 1-3 polls a phase instead of ~4 (docs/ipmi.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import redis

from conductor import keys
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


#: ``driver_internal_info`` key: {target power state: seconds the BMC took to report it, as last learned}.
LEARNED = "power_transition"
#: Commands whose transition time is learned (a soft power off's is the OS's, not the BMC's).
LEARNABLE = frozenset({P.POWER_ON, P.POWER_OFF})
#: A first poll that found the node there: the next guess is this much of it (a hit says only
#: that the node was there by then, so a guess too long, from one slow transition, must shrink
#: fast; at a steady transition time the guesses alternate between a hit and a poll too early).
SHORTEN = 0.75
#: The deployment-wide figure is written again only when a node's moved this much (a fraction) from it.
SHARED_MOVE = 0.25
#: Seconds a process keeps the deployment-wide figures.
SHARED_CACHE = 1.0
_SHARED = "power.transitions"


def _send(task: Task, command: P, progress: dict[str, object]) -> None:
    task.driver.power.set_power_state(task, command)
    progress.update(sent_at=time.time(), command=str(command), interval=None)
    for key in ("guess", "missed"):
        progress.pop(key, None)
    task.record("power.command", f"Sent {command}.")


def _shared(task: Task) -> dict[str, float]:
    """The deployment-wide figures, ``<driver>|<state>`` -> seconds (cached per process; {} without Redis)."""
    cache = task.ctx.cache
    now = time.monotonic()
    held = cache.get(_SHARED)
    if held is not None and now - held[0] < SHARED_CACHE:
        return held[1]  # type: ignore[no-any-return]
    figures: dict[str, float] = {}
    with contextlib.suppress(redis.RedisError, ValueError):
        raw = task.ctx.redis.hgetall(keys.power_transitions(task.settings.redis_namespace))
        figures = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
        figures = {k: v for k, v in figures.items() if math.isfinite(v) and v > 0}
    cache[_SHARED] = (now, figures)
    return figures


def _guess(task: Task, want: P) -> float | None:
    """Seconds after the command at which the node is expected in ``want`` (None: not known)."""
    own = (task.node.driver_internal_info or {}).get(LEARNED) or {}
    figure = own.get(want) if isinstance(own, dict) else None
    if not isinstance(figure, int | float) or not math.isfinite(figure) or figure < 0:
        # Nothing of its own (0 would be its own: done at once, no guess): its driver's.
        figure = _shared(task).get(f"{task.node.driver}|{want}")
    # Never a first poll later than the doubling polls' longest interval: a guess too
    # long (a transition that was slow once) costs at most that, a quarter less each time.
    return min(float(figure), task.settings.power_poll_max) if figure else None


def _poll(task: Task, want: P, progress: dict[str, Any], what: str) -> Poll:
    """The :class:`Poll` after a check that did not find ``want``: at the guess first, then doubling."""
    settings = task.settings
    elapsed = time.time() - float(progress["sent_at"])
    if progress.get("command") in LEARNABLE:
        if "guess" not in progress:
            progress["guess"] = _guess(task, want) or 0.0  # 0: nothing learned
        guess = float(progress["guess"])
        if guess > 0 and not progress.get("missed"):
            if elapsed < guess:
                return Poll(max(settings.power_poll_initial, guess - elapsed), what)
            progress["missed"] = True  # checked at (or after) the guess, and not there yet
    interval = min(float(progress.get("interval") or settings.power_poll_initial / 2) * 2, settings.power_poll_max)
    progress["interval"] = interval
    return Poll(interval, what)


def _arrived(task: Task, want: P, progress: dict[str, Any], at_once: bool) -> None:
    """Learn how long the command took from the check that found ``want`` (``at_once``: the one right after it)."""
    if progress.get("command") not in LEARNABLE or "sent_at" not in progress:
        return
    guess = float(progress.get("guess") or 0.0)
    figure: float
    if at_once:
        figure = 0.0  # done at the check right after the command: no guess next time
    elif guess > 0 and not progress.get("missed"):
        figure = round(guess * SHORTEN, 3)  # there at the guess: try a little sooner next time
    else:
        figure = round(time.time() - float(progress["sent_at"]), 3)
    own = dict((task.node.driver_internal_info or {}).get(LEARNED) or {})
    if own.get(want) != figure:
        own[want] = figure
        task.update_internal_info(**{LEARNED: own})
    # The driver's figure: only from BMCs that needed polls (one done at once never waits for a
    # poll), and written only when it moved by a quarter (a rough start for nodes new to it).
    if figure <= 0:
        return
    field = f"{task.node.driver}|{want}"
    shared = _shared(task)
    if abs(figure - shared.get(field, 0.0)) > SHARED_MOVE * figure:
        with contextlib.suppress(redis.RedisError):
            task.ctx.redis.hset(keys.power_transitions(task.settings.redis_namespace), field, figure)
            shared[field] = figure


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
        sent_now = "sent_at" not in progress
        if sent_now:
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
            _arrived(task, want, progress, at_once=sent_now)
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
        return _poll(task, want, progress, f"waiting for {want}")
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
    sent_now = "sent_at" not in progress
    if sent_now:
        current = task.driver.power.get_power_state(task)
        observe(task, current)
        if current == want:
            return None
        _send(task, want, progress)
    current = task.driver.power.get_power_state(task)
    observe(task, current)
    if current == want:
        _arrived(task, want, progress, at_once=sent_now)
        return None
    elapsed = time.time() - float(progress["sent_at"])  # type: ignore[arg-type]
    if elapsed > settings.power_timeout:
        raise DriverError(
            f"Node reports {current or 'unknown'} {elapsed:.0f} s after {want} was sent "
            f"(timeout {settings.power_timeout:g} s)."
        )
    return _poll(task, want, progress, f"waiting for {want}")


def _next_phase(progress: dict[str, object]) -> None:
    progress["phase"] = int(progress.get("phase", 0)) + 1  # type: ignore[call-overload]
    for key in ("sent_at", "command", "interval", "guess", "missed"):
        progress.pop(key, None)


def fail(task: Task, message: str) -> None:
    """Record a failed power request on the node."""
    task.node.last_error = message
