"""The command line itself: global options everywhere, usage errors, shell completion."""

from __future__ import annotations

import click
from click.testing import CliRunner

from conductor.cli import exits, main

GLOBAL = {"--url", "--token", "--json", "--format", "--column", "--max-retry-wait", "--ca-cert",
          "--allow-plain-http", "--client-cert", "--client-key"}


def leaves(group: click.Group, path: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaves(command, f"{path}{name} "))
        else:
            found[f"{path}{name}"] = command
    return found


def test_every_client_command_takes_the_global_options_after_it() -> None:
    commands = leaves(main)
    for name in ("node show", "node list", "node power on", "node reboot", "request show", "token list",
                 "conductors", "subscription create", "image list", "port list", "throttle set"):
        opts = {o for p in commands[name].params for o in getattr(p, "opts", [])}
        assert opts >= GLOBAL, name
    for server_side in ("up", "api", "worker", "db upgrade", "secrets rotate-key"):
        assert not GLOBAL & {o for p in commands[server_side].params for o in getattr(p, "opts", [])}


def test_a_wrong_command_line_exits_64_not_2() -> None:
    assert CliRunner().invoke(main, ["node", "list", "-f", "xml"]).exit_code == exits.USAGE
    assert CliRunner().invoke(main, ["node", "lst"]).exit_code == exits.USAGE
    assert CliRunner().invoke(main, ["--bogus"]).exit_code == exits.USAGE
    both = CliRunner().invoke(main, ["node", "power", "on", "n1", "--all"])
    assert both.exit_code == exits.USAGE and "not both" in both.output
    none = CliRunner().invoke(main, ["node", "power", "on"])
    assert none.exit_code == exits.USAGE and "--all or --filter" in none.output


def complete(words: str) -> list[str]:
    result = CliRunner().invoke(main, [], prog_name="conductor", env={
        "_CONDUCTOR_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)})
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.output.splitlines()]


def test_shell_completion_script_and_completions() -> None:
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files")):
        script = CliRunner().invoke(main, [], prog_name="conductor", env={"_CONDUCTOR_COMPLETE": f"{shell}_source"})
        assert script.exit_code == 0 and marker in script.output and "_CONDUCTOR_COMPLETE" in script.output, shell
    assert "power" in complete("conductor node po")
    assert complete("conductor node show n1 --js") == ["--json"]
    assert complete("conductor node list -f y") == ["yaml"]


def test_a_wrong_column_is_refused_before_anything_is_sent() -> None:
    # The URL answers nothing: exit 4 would mean the command was sent before -c was checked.
    for args in (["node", "power", "on", "n1"], ["node", "power", "on", "n1", "n2"],
                 ["node", "boot-device", "n1", "pxe"]):
        result = CliRunner().invoke(main, [*args, "--url", "http://127.0.0.1:9", "-c", "bogus"])
        assert result.exit_code == exits.USAGE and "no field bogus" in result.output, args
