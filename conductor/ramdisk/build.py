"""Assemble the agent ramdisk: ``agent.kernel`` and ``agent.initramfs``.

The kernel is Debian's (``linux-image-amd64``, resolved to its versioned
package); the initramfs holds busybox (``busybox-static``), the storage and
network modules with their dependencies (:mod:`conductor.ramdisk.modules`),
their load order, and the agent (``files/``).  The initramfs is a cpio
newc archive written here (:mod:`conductor.ramdisk.cpio`), gzip-compressed,
byte-for-byte reproducible from the same packages.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from conductor.ramdisk import cpio, debs, modules

FILES = Path(__file__).with_name("files")
KERNEL_NAME = "agent.kernel"
INITRAMFS_NAME = "agent.initramfs"


class BuildError(RuntimeError):
    """The ramdisk could not be built (see the message)."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    path: Path
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class BuildResult:
    kernel: Artifact
    initramfs: Artifact
    kernel_version: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    seconds: float

    @property
    def total_size(self) -> int:
        return self.kernel.size + self.initramfs.size


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/conductor/ramdisk``, else ``~/.cache/conductor/ramdisk``."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()) / "conductor" / "ramdisk"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _module_bytes(path: Path) -> bytes:
    """A module file, decompressed (busybox insmod loads plain ``.ko`` files)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        try:
            return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise BuildError(f"cannot decompress {path.name}: zstd is needed ({exc})") from exc
    return data


def _plain(rel: str) -> str:
    for suffix in (".xz", ".gz", ".zst"):
        if rel.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def kernel_release(tree: Path) -> str:
    """The one kernel release under ``tree/lib/modules``.

    :raises BuildError: none or several.
    """
    releases = sorted(p.name for p in (tree / "lib" / "modules").glob("*") if (p / "kernel").is_dir())
    if len(releases) != 1:
        raise BuildError(f"expected one kernel release in the kernel package, found {releases}")
    return releases[0]


def modules_dep(tree: Path, release: str, busybox: Path) -> Path:
    """``modules.dep`` of the unpacked kernel, generated once with ``depmod -b``.

    The package does not ship it (its postinst runs depmod).  kmod's
    ``depmod`` is used when the host has it, else busybox's own.

    :raises BuildError: depmod failed.
    """
    path = tree / "lib" / "modules" / release / "modules.dep"
    if path.is_file():
        return path
    kmod = shutil.which("depmod") or next((p for p in ("/sbin/depmod", "/usr/sbin/depmod") if os.path.exists(p)), None)
    command = [kmod] if kmod else [str(busybox), "depmod"]
    done = subprocess.run([*command, "-b", str(tree), release], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file():
        raise BuildError(f"{' '.join(command)} -b {tree} {release} failed: {done.stderr.strip()[-300:]}")
    return path


def initramfs_entries(busybox: Path, kernel_tree: Path, release: str, order: Iterable[str],
                      release_note: str) -> list[cpio.Entry]:
    """Everything in the initramfs (parents are added by the cpio writer)."""
    entries = [
        cpio.Entry.file("init", (FILES / "init").read_bytes(), 0o755),
        cpio.Entry.file("etc/udhcpc.script", (FILES / "udhcpc.script").read_bytes(), 0o755),
        cpio.Entry.file("lib/agent/json.awk", (FILES / "json.awk").read_bytes()),
        cpio.Entry.file("etc/agent-release", release_note.encode()),
        cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.Entry.symlink("bin/sh", "busybox"),
        cpio.Entry.chardev("dev/console", 5, 1),
        cpio.Entry.chardev("dev/null", 1, 3, 0o666),
    ]
    entries += [cpio.Entry.directory(d) for d in ("proc", "sys", "tmp", "run", "sbin", "usr/bin", "usr/sbin")]
    moddir = f"lib/modules/{release}"
    loaded = []
    for rel in order:
        plain = _plain(rel)
        entries.append(cpio.Entry.file(f"{moddir}/{plain}", _module_bytes(kernel_tree / moddir / rel)))
        loaded.append(plain)
    entries.append(cpio.Entry.file(f"{moddir}/load.order", "".join(f"{p}\n" for p in loaded).encode()))
    return entries


@dataclasses.dataclass(frozen=True)
class Packages:
    """The unpacked kernel and busybox packages a build uses (from the cache)."""

    kernel_tree: Path
    vmlinuz: Path
    busybox: Path
    release: str
    #: ``name=version`` of each package, kernel first.
    versions: tuple[str, ...]

    @property
    def note(self) -> str:
        """What ``/etc/agent-release`` says: the packages and the kernel release."""
        kernel, busybox = (v.replace("=", " ", 1) for v in self.versions)
        return f"kernel {kernel} ({self.release})\nbusybox {busybox}\n"


def unpacked_packages(cache: Path, progress: Callable[[str], None] | None = None) -> Packages:
    """Resolve, fetch (unless cached) and unpack the kernel and busybox packages in ``cache``.

    :raises debs.PackageError: a package could not be resolved, downloaded or unpacked.
    :raises BuildError: the packages do not hold what is expected.
    """
    say = progress or (lambda _msg: None)
    kernel_pkg, busybox_pkg = debs.resolve_kernel(), debs.resolve(debs.BUSYBOX)
    trees = {}
    for package in (kernel_pkg, busybox_pkg):
        deb = debs.fetch(package, cache)
        say(f"{package.name} {package.version}: {deb}")
        trees[package.name] = debs.unpack(deb)
    kernel_tree, busybox_tree = trees[kernel_pkg.name], trees[busybox_pkg.name]
    release = kernel_release(kernel_tree)
    vmlinuz = kernel_tree / "boot" / f"vmlinuz-{release}"
    busybox = busybox_tree / "bin" / "busybox"
    for needed in (vmlinuz, busybox):
        if not needed.is_file():
            raise BuildError(f"{needed} is missing from the unpacked package")
    return Packages(kernel_tree, vmlinuz, busybox, release,
                    (f"{kernel_pkg.name}={kernel_pkg.version}", f"{busybox_pkg.name}={busybox_pkg.version}"))


def build(out: Path, cache: Path, wanted: Iterable[str] = modules.DEFAULT_MODULES, mtime: int | None = None,
          progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build ``out/agent.kernel`` and ``out/agent.initramfs``; the ``.deb`` files stay in ``cache``.

    :param mtime: the time stamped on every archive member (default ``$SOURCE_DATE_EPOCH`` or 0).
    :raises debs.PackageError: a package could not be resolved, downloaded or unpacked.
    :raises modules.UnknownModule: a wanted module is not in the kernel package.
    :raises BuildError: the packages do not hold what is expected.
    """
    started = time.monotonic()
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    got = unpacked_packages(cache, progress)
    kernel_tree, release, busybox, vmlinuz = got.kernel_tree, got.release, got.busybox, got.vmlinuz
    deps = modules.parse(modules_dep(kernel_tree, release, busybox).read_text())
    order = modules.load_order(deps, wanted)
    entries = initramfs_entries(busybox, kernel_tree, release, order, got.note)

    out.mkdir(parents=True, exist_ok=True)
    kernel_path, initramfs_path = out / KERNEL_NAME, out / INITRAMFS_NAME
    partial = initramfs_path.with_name(INITRAMFS_NAME + ".partial")
    with partial.open("wb") as handle:
        cpio.write_gzip(handle, entries, mtime=mtime)
    os.replace(partial, initramfs_path)
    partial = kernel_path.with_name(KERNEL_NAME + ".partial")
    shutil.copyfile(vmlinuz, partial)
    os.replace(partial, kernel_path)
    artifacts = [Artifact(p, p.stat().st_size, _sha256(p)) for p in (kernel_path, initramfs_path)]
    return BuildResult(artifacts[0], artifacts[1], release, got.versions,
                       tuple(modules.module_name(p) for p in order), time.monotonic() - started)
