"""DMTF's Redfish Service Validator against the simulator's Redfish (docs/redfish.md).

Usage (from the repository root)::

    python3 -m venv /tmp/rsv && /tmp/rsv/bin/pip install redfish-service-validator
    .venv/bin/python bench/redfish_validator.py --validator /tmp/rsv/bin/rf_service_validator \\
        --schemas DIR

The validator lives in a venv of its own: it pins ``cryptography`` below
the conductor's.  It checks every resource it can reach from the service
root against DMTF's CSDL schemas (DSP8010): ``--schemas`` is a directory
holding them (the ``csdl/`` folder of DMTF's Redfish-Publications, or the
unpacked DSP8010 bundle).  Without ``--schemas`` the validator downloads
the bundle from dmtf.org itself (a machine with Internet access).

Starts a fleet of one BMC with Redfish over HTTPS (self-signed), runs the
validator with session authentication, prints its summary (pass, warn,
fail, not tested) and the report's path, and exits with the validator's
status (0: no failure).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conductor.bmcsim import Fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validator", default=shutil.which("rf_service_validator") or "rf_service_validator",
                        help="the rf_service_validator program [on PATH]")
    parser.add_argument("--schemas", type=Path, help="directory of DMTF CSDL schemas (default: download them)")
    parser.add_argument("--report-dir", type=Path, default=None, help="where the reports go [a temp dir]")
    parser.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    args = parser.parse_args()
    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="redfish-validator-"))
    with Fleet(count=1, shards=1, redfish_port=0, redfish_tls=not args.http) as fleet:
        info = fleet.redfish_driver_info(fleet.bmcs[0].name)
        assert info is not None
        command = [args.validator, "--rhost", info["redfish_address"], "--user", info["redfish_username"],
                   "--password", info["redfish_password"], "--authtype", "Session", "--timeout", "10",
                   "--logdir", str(report_dir)]
        if args.schemas:
            command += ["--schema_directory", str(args.schemas), "--skipschema"]
        print(f"validating {info['redfish_address']} ({fleet.bmcs[0].name})", flush=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            print(f"no validator at {args.validator}: see this script's docstring", file=sys.stderr)
            return 2
    output = result.stdout + result.stderr
    for line in output.splitlines():
        if re.match(r"Validating |\s+- Pass", line) and "Fail: 0" not in line and "Validating" not in line:
            print(line)
    table = re.search(r"\|\s+PASS.*?\n.*?\n\|(.*?)\|\n", output, re.S)
    if table:
        numbers = [n.strip() for n in table.group(1).split("|")]
        print(f"validator summary: pass {numbers[0]}, warn {numbers[1]}, fail {numbers[2]}, "
              f"not tested {numbers[3]}")
    else:
        print(output[-4000:])
    warnings = sorted({m.group(1) for m in re.finditer(r"WARN - (.*)", _debug_log(report_dir))})
    for warning in warnings:
        print(f"  warning: {warning}")
    print(f"reports in {report_dir}; validator exit status {result.returncode}")
    return result.returncode


def _debug_log(report_dir: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in report_dir.glob("*/RedfishServiceValidatorDebug*"))


if __name__ == "__main__":
    sys.exit(main())
