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
