"""Callback tests: fast retry settings and a real receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conductor.settings import Settings
from tests.callback_helpers import Receiver, receiver_fixture


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with retries in tenths of seconds and no jitter."""
    return settings.replace(
        callback_retry_schedule="0.05,0.1",
        callback_jitter=0,
        callback_timeout=2,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiver_fixture()
