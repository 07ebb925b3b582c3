"""Debian packages for the ramdisk: resolve, download into a cache, unpack.

Uses the host's apt configuration through its ordinary clients:
``apt-cache show`` to resolve a package's candidate version (no network),
``apt-get download`` to fetch the ``.deb`` into the cache directory, and
``dpkg-deb -x`` to unpack it (none of them needs root).  A ``.deb`` already
in the cache under its exact name (``name_version_arch.deb``) is not
downloaded again, and its unpacked tree is kept next to it, so a warm
build touches neither the network nor ``dpkg-deb``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"


class PackageError(RuntimeError):
    """A package could not be resolved, downloaded or unpacked."""


@dataclasses.dataclass(frozen=True)
class Package:
    """One resolved binary package."""

    name: str
    version: str
    arch: str
    depends: str = ""

    @property
    def filename(self) -> str:
        """The name ``apt-get download`` gives the file (an epoch's ``:`` is written ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=1800)
    except FileNotFoundError as exc:
        raise PackageError(f"{args[0]} is not installed (a Debian host is needed to build the ramdisk)") from exc
    if done.returncode != 0:
        raise PackageError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def resolve(name: str) -> Package:
    """The candidate version of package ``name`` in the host's apt lists.

    :raises PackageError: unknown package (run ``apt-get update``?).
    """
    fields: dict[str, str] = {}
    for line in _run(["apt-cache", "show", "--no-all-versions", name]).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" ") and key not in fields:
            fields[key] = value.strip()
    if "Version" not in fields:
        raise PackageError(f"apt knows no version of {name}")
    return Package(fields.get("Package", name), fields["Version"], fields.get("Architecture", "amd64"),
                   fields.get("Depends", ""))


def resolve_kernel(meta: str = KERNEL_META) -> Package:
    """The versioned kernel image package the metapackage depends on (``linux-image-6.1.0-N-amd64``).

    :raises PackageError: the metapackage names no ``linux-image-`` dependency.
    """
    for alternative in resolve(meta).depends.replace("|", ",").split(","):
        name = alternative.strip().split(" ", 1)[0]
        if name.startswith("linux-image-"):
            return resolve(name)
    raise PackageError(f"{meta} depends on no linux-image- package")


def fetch(package: Package, cache: Path) -> Path:
    """The package's ``.deb`` in ``cache``, downloaded with ``apt-get download`` unless already there."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / package.filename
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        # Readable by apt's sandbox user, or apt warns and downloads as root.
        os.chmod(tmp, 0o755)
        _run(["apt-get", "download", "-q", f"{package.name}={package.version}"], cwd=Path(tmp))
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise PackageError(f"apt-get download {package.name} gave {len(got)} files")
        os.replace(got[0], target)
    return target


def unpack(deb: Path) -> Path:
    """The unpacked tree of ``deb`` (``dpkg-deb -x``), next to it; kept for the next build."""
    tree = deb.with_suffix(".tree")
    if (tree / ".complete").is_file():
        return tree
    # A partial tree of its own: two builds sharing the cache (the agent
    # ramdisk and the demo disk image, say) may unpack the same package at once;
    # the first complete tree renamed into place wins, and is never removed.
    partial = Path(tempfile.mkdtemp(dir=deb.parent, prefix=f".{tree.name}-partial-"))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(partial)])
        (partial / ".complete").write_text(deb.name + "\n")
        try:
            os.replace(partial, tree)
        except OSError:  # a tree is there already: another build's, or an older incomplete one
            if not (tree / ".complete").is_file():
                shutil.rmtree(tree, ignore_errors=True)
                os.replace(partial, tree)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tree
