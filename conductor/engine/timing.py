"""BMC calls timed into the step's transaction (``conductor_bmc_command_duration_seconds``).

A step's BMC calls are stashed on its session and counted only when the
step commits (see :mod:`conductor.metrics`): a rolled-back step counts
nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from conductor import metrics
from conductor.drivers.base import Driver, TryLater


class _TimedInterface:
    """Times every call of a BMC-facing driver interface (``validate`` excepted)."""

    def __init__(self, interface: Any, driver: str, session: Session) -> None:
        self._interface = interface
        self._driver = driver
        self._session = session

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._interface, name)
        if name.startswith("_") or name == "validate" or not callable(attribute):
            return attribute
        return self._timed(name, attribute)

    def _timed(self, command: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            labels = {"driver": self._driver, "command": command}
            started = time.perf_counter()
            try:
                result = call(*args, **kwargs)
            except TryLater:
                raise  # busy or paced: the BMC was not asked, nothing to count
            except Exception:
                metrics.stash(self._session, metrics.BMC_ERRORS, labels, 1)
                metrics.stash(self._session, metrics.BMC_DURATION, labels, time.perf_counter() - started)
                raise
            metrics.stash(self._session, metrics.BMC_DURATION, labels, time.perf_counter() - started)
            return result

        return timed


def timed_driver(driver: Driver, session: Session) -> Driver:
    """``driver`` with its power and management calls (the BMC's) timed into ``session``."""
    management = driver.management
    return dataclasses.replace(
        driver,
        power=_TimedInterface(driver.power, driver.name, session),  # type: ignore[arg-type]
        management=(
            _TimedInterface(management, driver.name, session)  # type: ignore[arg-type]
            if management is not None
            else None
        ),
    )
