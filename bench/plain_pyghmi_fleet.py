"""N BMCs in one process on pyghmi's own server loop: the naive design, for comparison.

Usage: python bench/plain_pyghmi_fleet.py BASE_PORT COUNT

This is what FINDINGS.md measured wedging under load; bench/bmcsim_load.py
``storm --target plain`` drives it exactly like the real simulator.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import traceback

import pyghmi.ipmi.bmc as bmc


class PlainBmc(bmc.Bmc):
    """A minimal BMC on pyghmi's server side, like pyghmi's fakebmc."""

    def __init__(self, port: int) -> None:
        super().__init__({"admin": "password"}, port=port, address="127.0.0.1")
        self.power = "off"
        self.bootdev = "default"

    def get_power_state(self) -> str:
        return self.power

    def power_on(self) -> None:
        self.power = "on"

    def power_off(self) -> None:
        self.power = "off"

    def power_shutdown(self) -> None:
        self.power = "off"

    def power_cycle(self) -> None:
        self.power = "on"

    def power_reset(self) -> None:
        pass

    def get_boot_device(self) -> str:
        return self.bootdev

    def set_boot_device(self, bootdevice: str) -> None:
        self.bootdev = bootdevice

    def is_active(self) -> bool:
        return self.power == "on"


def _log_thread_deaths() -> None:
    """pyghmi's I/O thread dying is the suspected wedge: say so on stderr."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        print(f"THREAD DIED: {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
              f"{args.exc_value}", file=sys.stderr, flush=True)
        previous(args)

    threading.excepthook = hook


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stack dump on demand
    _log_thread_deaths()
    base, count = int(sys.argv[1]), int(sys.argv[2])
    bmcs = [PlainBmc(base + i) for i in range(count)]
    print(f"ready {len(bmcs)}", flush=True)
    try:
        bmcs[0].listen()
    except Exception:  # report how the loop died, then exit non-zero
        traceback.print_exc()
        sys.exit(3)


if __name__ == "__main__":
    main()
