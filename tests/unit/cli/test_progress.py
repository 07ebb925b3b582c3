"""``--wait``'s progress: each change once, off a terminal as on one."""

from __future__ import annotations

import io

from conductor.cli.progress import Progress


def states(provision: str, power: str | None = None) -> dict:
    return {"provision_state": provision, "power_state": power}


def request(state: str, step: str | None = None) -> dict:
    return {"id": "req-1", "state": state, "step": step}


def test_off_a_terminal_each_change_is_one_line() -> None:
    stream = io.StringIO()
    show = Progress(stream)
    assert show.live is False  # a StringIO is no terminal
    for _poll in range(5):
        show(request("queued"), states("enroll"))
    for _poll in range(3):
        show(request("running", "power on"), states("enroll", "power off"))
    show(request("succeeded"), states("manageable", "power on"))
    assert stream.getvalue().splitlines() == [
        "req-1: queued | provision enroll | power unknown",
        "req-1: running | step power on | provision enroll | power power off",
        "req-1: succeeded | provision manageable | power power on",
    ]


def test_on_a_terminal_one_line_is_rewritten_and_ended() -> None:
    stream = io.StringIO()
    show = Progress(stream, live=True)
    show(request("queued"), None)
    show(request("queued"), None)
    show(request("failed"), None)
    assert stream.getvalue() == "\r\x1b[2Kreq-1: queued\r\x1b[2Kreq-1: failed\n"


def test_an_interrupted_live_line_is_ended() -> None:
    stream = io.StringIO()
    show = Progress(stream, live=True)
    show(request("running"), None)
    show.interrupted()
    assert stream.getvalue().endswith("req-1: running\n")
