"""What a login costs as one process holds more pyghmi sessions (docs/ipmi-notes.md row 11).

Usage (from the repository root)::

    .venv/bin/python bench/ipmi_logins.py --sessions 1000

Starts a simulated fleet of ``--sessions`` + ``--measure`` BMCs, logs in to
the first ``--measure`` (few sessions open) and times those logins, opens
sessions to the rest, then times ``--measure`` more logins with
``--sessions`` open, and ``--sessions`` calls on open sessions.  Prints wall
and CPU seconds (this process, the pyghmi I/O thread included) and the CPU
per call.  Run the version to compare right before or after on the same
machine: its speed drifts by tens of percent within minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conductor.bmcsim import Fleet
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials


def timed(label: str, bmcs: Sequence[Any], call: Callable[[Any], object]) -> None:
    wall, cpu = time.monotonic(), time.process_time()
    for bmc in bmcs:
        call(bmc)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    print(f"{label}: {len(bmcs)} in {wall:.2f} s wall, {cpu:.2f} CPU-s ({1000 * cpu / len(bmcs):.2f} ms each)",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000, help="sessions held open [1000]")
    parser.add_argument("--measure", type=int, default=200, help="logins timed in each phase [200]")
    args = parser.parse_args()
    clients: dict[str, BMCClient] = {}

    def client(bmc: Any) -> BMCClient:
        if bmc.name not in clients:
            clients[bmc.name] = BMCClient(BMCCredentials(bmc.host, bmc.port, bmc.username, bmc.password),
                                          timeout=2, retries=1)
        return clients[bmc.name]

    with Fleet(count=args.sessions + args.measure, delay=0, initial_power="on",
               stderr=subprocess.DEVNULL) as fleet:
        bmcs = fleet.bmcs
        timed("logins, few sessions open", bmcs[: args.measure], lambda b: client(b).get_power())
        for bmc in bmcs[args.measure : args.sessions]:
            client(bmc).get_power()
        timed(f"logins, {args.sessions} sessions open", bmcs[args.sessions :], lambda b: client(b).get_power())
        timed("calls on open sessions", bmcs[: args.sessions], lambda b: client(b).get_power())
    return 0


if __name__ == "__main__":
    sys.exit(main())
