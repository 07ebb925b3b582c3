"""Redis key names: pinned byte for byte, and built only in conductor/keys.py."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import redis

from conductor import keys
from conductor.callbacks.outbox import CallbackQueue
from conductor.settings import Settings
from conductor.throttle.buckets import Limiter
from conductor.throttle.drain import DrainMeter
from conductor.workqueue import WorkQueue

PACKAGE = Path(keys.__file__).resolve().parent

#: Every key of the default namespace as deployments have it in Redis today.
#: A rename strands what a running deployment holds: change a string here
#: only together with a migration of the running deployments.
PINNED = {
    "work_queue": ((), "conductor-work"),
    "sync_queue": ((), "conductor-sync"),
    "timers": ((), "conductor:timers"),
    "pumped": ((), "conductor:pumped"),
    "drain": ((), "conductor:drain"),
    "callback_queue": ((), "conductor-callbacks"),
    "callback_wake": ((), "conductor:callbacks:wake"),
    "events": ((), "conductor:events"),
    "events_order": ((), "conductor:events:order"),
    "events_parked": ((), "conductor:events:parked"),
    "events_parked_at": ((), "conductor:events:parked-at"),
    "events_meta": ((), "conductor:events:meta"),
    "rate_bucket": (("client-write", "token:abc"), "conductor:rl:client-write:token:abc"),
    "throttle": ((), "conductor:throttle"),
    "bmc_pace": (("10.0.0.5:623",), "conductor:bmc:10.0.0.5:623"),
    "bmc_busy": (("10.0.0.5:623",), "conductor:bmc-busy:10.0.0.5:623"),
    "power_transitions": ((), "conductor:power-transitions"),
    "redfish_session": (("0f1e2d",), "conductor:redfish-session:0f1e2d"),
    "conductor_pidns": (("host-w0",), "conductor:conductor-pidns:host-w0"),
    "turn": (("wait-watchdog",), "conductor:wait-watchdog"),
    "power_sync_round": ((), "conductor:power-sync:round"),
    "power_sync_pending": ((), "conductor:power-sync:pending"),
    "metrics": ((), "conductor:metrics"),
}

#: What building a key by hand looks like: the namespace formatted into an
#: f-string, or glued to a literal with ``+``.
_BUILDS_A_KEY = re.compile(r"""namespace\}|namespace\s*\+\s*["']|["']\s*\+\s*[\w.]*namespace\b""")


def _key_functions() -> set[str]:
    return {name for name, value in inspect.getmembers(keys, inspect.isfunction) if value.__module__ == keys.__name__}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_key_string_is_todays(name: str) -> None:
    args, expected = PINNED[name]
    assert getattr(keys, name)("conductor", *args) == expected
    assert getattr(keys, name)("other", *args) == "other" + expected.removeprefix("conductor")


def test_every_key_function_is_pinned() -> None:
    assert _key_functions() == set(PINNED), "pin the new key's string in PINNED"


def test_every_key_function_says_what_lives_there() -> None:
    for name in _key_functions():
        doc = inspect.getdoc(getattr(keys, name)) or ""
        assert doc.startswith("``<ns>"), f"keys.{name}: its docstring starts with the key's shape"
        assert "expir" in doc.lower() or "not itself a key" in doc, f"keys.{name}: say when it expires"


@pytest.mark.parametrize("chore", list(keys.Chore))
def test_chore_turns_do_not_collide_with_other_keys(chore: keys.Chore) -> None:
    others = {getattr(keys, name)("ns", *args) for name, (args, _) in PINNED.items() if name != "turn"}
    assert keys.turn("ns", chore) not in others


def test_an_unknown_chore_has_no_turn() -> None:
    with pytest.raises(ValueError):
        keys.turn("ns", "throttle")


def test_the_modules_use_the_same_strings() -> None:
    settings = Settings(redis_namespace="conductor")
    connection = redis.Redis()  # never connected: nothing below sends a command
    queue = WorkQueue(connection, settings)
    assert (queue.queue.key, queue.timers_key, queue.pumped_key) == (
        "rq:queue:conductor-work", "conductor:timers", "conductor:pumped")
    callbacks = CallbackQueue(connection, settings)
    assert (callbacks.queue.key, callbacks.wake_key) == ("rq:queue:conductor-callbacks", "conductor:callbacks:wake")
    assert DrainMeter(connection, "conductor").key == "conductor:drain"
    limiter = Limiter(connection, "conductor", queue.queue.key)
    assert limiter.bucket("write", "*", 1.0, 1).key == "conductor:rl:write:*"
    assert limiter.drain_key == "conductor:drain"


def test_keys_is_a_bottom_layer_module() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(keys.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "conductor":
            imported.update(f"conductor.{alias.name}" for alias in node.names)  # from conductor import x
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert {name for name in imported if name.split(".")[0] == "conductor"} <= {"conductor.settings"}


def _modules_building_keys() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "keys.py":
            continue
        lines = [f"{relative}:{number}: {line.strip()}"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if _BUILDS_A_KEY.search(line)]
        if lines:
            found[relative] = lines
    return found


def test_no_module_builds_a_key_by_hand() -> None:
    offenders = _modules_building_keys()
    assert not offenders, "build Redis keys with conductor.keys:\n" + "\n".join(
        line for lines in offenders.values() for line in lines)
