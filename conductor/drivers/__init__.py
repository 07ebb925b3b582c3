"""Drivers, by name.

A driver is loaded by name from ``DRIVERS``; each entry is a factory so
that a driver's own dependencies (pyghmi for ``ipmi``) are imported only
when a node uses it (sushy for ``redfish``).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any, cast

from conductor.drivers.base import Driver
from conductor.exceptions import InvalidInput, UnknownDriver
from conductor.secretbox import is_secret

#: Driver name -> module whose ``driver()`` builds it.
DRIVERS: dict[str, str] = {
    "fake": "conductor.drivers.fake",
    "ipmi": "conductor.drivers.ipmi",
    "redfish": "conductor.drivers.redfish",
}


@functools.cache
def get(name: str) -> Driver:
    """The driver called ``name``.

    :raises UnknownDriver: no such driver.
    """
    if name not in DRIVERS:
        raise UnknownDriver(
            f"Unknown driver {name!r}; available: {', '.join(sorted(DRIVERS))}.",
            errors={"driver": f"must be one of {sorted(DRIVERS)}"},
        )
    return cast(Driver, importlib.import_module(DRIVERS[name]).driver())


def validate(name: str, driver_info: Mapping[str, Any]) -> None:
    """Check ``driver_info`` for driver ``name`` without touching hardware.

    :raises UnknownDriver: no such driver.
    :raises InvalidInput: field errors, listed in ``errors``.
    """
    errors = get(name).validate(driver_info)
    unknown = sorted(set(driver_info) - set(get(name).fields()))
    for key in unknown:
        errors.setdefault(key, f"unknown driver_info field for driver {name}")
    if errors:
        raise InvalidInput(
            f"Invalid driver_info for driver {name}: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
            errors={f"driver_info.{k}": v for k, v in errors.items()},
        )


def mask_secrets(driver_info: Mapping[str, Any]) -> dict[str, Any]:
    """``driver_info`` with every secret replaced by ``******``."""
    return {k: ("******" if is_secret(k) and v is not None else v) for k, v in driver_info.items()}
