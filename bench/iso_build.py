#!/usr/bin/env python3
"""Per-node ISO builds: how long ``build_iso`` takes to bake one node's kernel arguments into an ISO.

Builds the agent ramdisk once (``--ramdisk DIR`` to use an existing one),
then ``--nodes`` ISOs, each with its own node and token, one after the
other, as a conductor does when it boots nodes from virtual media.
Prints the ISO size, the first build's time (cold boot files), the
median and slowest of the rest, and whether two builds of the same node
gave the same sha256.

Figures only, never asserts (docs/benchmarks.md).

Usage: python bench/iso_build.py [--nodes 20] [--ramdisk DIR] [--uefi | --no-uefi]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from conductor.ramdisk import build, iso


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--ramdisk", type=Path, default=None, help="DIR with agent.kernel and agent.initramfs")
    parser.add_argument("--uefi", action=argparse.BooleanOptionalAction, default=None,
                        help="with the UEFI boot image (GRUB) [when the host can make it]")
    args = parser.parse_args()
    missing = iso.missing_tools()
    if missing:
        print(f"needs {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="iso-bench-") as tmp:
        ramdisk = args.ramdisk
        if ramdisk is None:
            ramdisk = Path(tmp, "ramdisk")
            built = build.build(ramdisk, build.default_cache_dir())
            print(f"ramdisk built in {built.seconds:.1f} s ({built.total_size / 1e6:.1f} MB)")
        kernel, initramfs = ramdisk / build.KERNEL_NAME, ramdisk / build.INITRAMFS_NAME
        times, size, first_node = [], 0, ""
        for i in range(args.nodes):
            node = str(uuid.uuid4())
            first_node = first_node or node
            out = Path(tmp, f"{node}.iso")
            result = iso.build_iso(out, kernel, initramfs,
                                   iso.node_kernel_args("http://192.0.2.1:6385", node, f"token-{i}"), uefi=args.uefi)
            times.append(result.seconds)
            size, uefi = result.image.size, result.uefi
            if i == 0:
                again = iso.build_iso(Path(tmp, "again.iso"), kernel, initramfs,
                                      iso.node_kernel_args("http://192.0.2.1:6385", node, "token-0"), uefi=args.uefi)
                same = again.image.sha256 == result.image.sha256
            out.unlink()
    rest = times[1:] or times
    kind = "BIOS and UEFI" if uefi else "BIOS only"
    print(f"ISO ({kind}) {size / 1e6:.1f} MB ({size:,d} bytes); {args.nodes} per-node builds: first {times[0]:.3f} s, "
          f"median {statistics.median(rest):.3f} s, slowest {max(rest):.3f} s (including sha256); "
          f"rebuild of one node {'identical' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
