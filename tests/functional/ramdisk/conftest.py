"""Fixtures for the agent ramdisk's end-to-end tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ramdisk_cache() -> Path:
    """Where downloaded .deb files are kept between runs ($CONDUCTOR_RAMDISK_CACHE, else the builder's default)."""
    from conductor.ramdisk.build import default_cache_dir

    return Path(os.environ.get("CONDUCTOR_RAMDISK_CACHE") or default_cache_dir())


@pytest.fixture(scope="session")
def built_ramdisk(tmp_path_factory: pytest.TempPathFactory, ramdisk_cache: Path):
    """``conductor ramdisk build`` once per session (skips without apt and dpkg-deb)."""
    from conductor.ramdisk.build import build

    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"building the ramdisk needs {tool} (a Debian host)")
    return build(tmp_path_factory.mktemp("ramdisk"), ramdisk_cache)


def need_image_tools() -> None:
    """Skip, naming the Debian packages, when the disk image cannot be built on this host."""
    from conductor.ramdisk.diskimage import missing_tools

    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"building the disk image needs {tool} (a Debian host)")
    missing = missing_tools()
    if missing:
        pytest.skip(f"building the disk image needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory: pytest.TempPathFactory, ramdisk_cache: Path):
    """``conductor ramdisk image`` once per session, with a marker of its own (skips without the tools)."""
    import uuid

    from conductor.ramdisk.diskimage import build_image

    need_image_tools()
    return build_image(tmp_path_factory.mktemp("diskimage") / "demo-disk.img", ramdisk_cache,
                       marker=f"test-{uuid.uuid4().hex[:12]}")
