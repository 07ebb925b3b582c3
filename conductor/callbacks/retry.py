"""When to try a delivery again: the schedule, jitter and ``Retry-After``.

The first attempt is immediate.  After the n-th failed attempt the next one
waits the n-th delay of ``callback_retry_schedule`` (the last delay repeats:
by default 5 s, 30 s, 2 min, 10 min, 30 min, then hourly), give or take
``callback_jitter`` (a fraction, so that receivers coming back from an
outage are not hit by every sender at once), and never less than a
``Retry-After`` the receiver sent.  Once the next attempt would fall
after ``callback_retry_window`` seconds from the event, the delivery fails.
"""

from __future__ import annotations

import datetime as dt
import random

from conductor import httpclient
from conductor.exceptions import InvalidInput
from conductor.settings import Settings


def schedule(settings: Settings) -> tuple[float, ...]:
    """The retry delays of the settings.

    :raises InvalidInput: not a comma-separated list of non-negative seconds.
    """
    text = settings.callback_retry_schedule
    try:
        delays = tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        delays = ()
    if not delays or any(d < 0 for d in delays):
        raise InvalidInput(
            f"Setting callback_retry_schedule must list delays in seconds, like "
            f"'5,30,120'; got {text!r}.",
            errors={"callback_retry_schedule": "expected comma-separated seconds"},
        )
    return delays


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), counted from ``now`` (aware)."""
    return httpclient.retry_after_seconds(value, now.timestamp())


def next_attempt(
    settings: Settings,
    attempts: int,
    created_at: dt.datetime,
    now: dt.datetime,
    retry_after: float | None = None,
) -> dt.datetime | None:
    """When to try again after ``attempts`` failed attempts; None to give up."""
    delays = schedule(settings)
    delay = delays[min(attempts, len(delays)) - 1] if attempts > 0 else 0.0
    jitter = settings.callback_jitter
    if jitter > 0:
        delay *= random.uniform(max(0.0, 1 - jitter), 1 + jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    when = now + dt.timedelta(seconds=delay)
    if when > created_at + dt.timedelta(seconds=settings.callback_retry_window):
        return None
    return when
