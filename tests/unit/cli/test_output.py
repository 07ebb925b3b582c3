"""``-f table|json|yaml|value`` and ``-c FIELD``: what a script reads from stdout."""

from __future__ import annotations

import json

import click
import pytest
import yaml

from conductor.cli.output import Output

NODE = {"uuid": "u-1", "name": "n1", "provision_state": "available", "power_state": None,
        "properties": {"cpus": 4}, "maintenance": False}
ROWS = [{"name": "n1", "provision_state": "available", "extra": {"a": 1}},
        {"name": "n2", "provision_state": "active", "extra": {}}]


def printed(capsys, fmt: str, columns=(), call="item"):  # type: ignore[no-untyped-def]
    out = Output(fmt, columns)
    if call == "item":
        out.item(NODE, ["name", "provision_state", "power_state"])
    else:
        out.table(ROWS, ["name", "provision_state"])
    return capsys.readouterr().out


def test_item_in_each_format(capsys) -> None:
    assert printed(capsys, "table") == "name             n1\nprovision_state  available\npower_state\n"
    assert json.loads(printed(capsys, "json")) == NODE  # every field, as the API answered
    assert yaml.safe_load(printed(capsys, "yaml")) == NODE
    assert printed(capsys, "value") == "n1\navailable\n\n"


def test_item_columns(capsys) -> None:
    assert printed(capsys, "value", ["provision_state"]) == "available\n"
    assert printed(capsys, "value", ["Properties"]) == '{"cpus":4}\n'  # any field, any case
    assert json.loads(printed(capsys, "json", ["name", "maintenance"])) == {"name": "n1", "maintenance": False}
    assert printed(capsys, "table", ["uuid"]) == "uuid  u-1\n"


def test_list_in_each_format(capsys) -> None:
    assert printed(capsys, "table", call="table").splitlines() == [
        "NAME  PROVISION_STATE", "n1    available", "n2    active"]
    assert json.loads(printed(capsys, "json", call="table")) == ROWS
    assert yaml.safe_load(printed(capsys, "yaml", call="table")) == ROWS
    assert printed(capsys, "value", call="table") == "n1 available\nn2 active\n"
    assert printed(capsys, "value", ["provision_state", "extra"], call="table") == 'available {"a":1}\nactive {}\n'
    assert json.loads(printed(capsys, "json", ["name"], call="table")) == [{"name": "n1"}, {"name": "n2"}]


def test_an_unknown_column_is_a_usage_error_naming_the_fields() -> None:
    with pytest.raises(click.UsageError, match=r"no field bogus.*provision_state"):
        Output("value", ["bogus"]).item(NODE)
    with pytest.raises(click.UsageError, match="no field bogus"):
        Output("table", ["bogus"]).table(ROWS, ["name"])


def test_an_empty_list(capsys) -> None:
    Output("json").table([], ["name"])
    assert json.loads(capsys.readouterr().out) == []
    Output("table", ["name", "anything"]).table([], ["name"])
    assert capsys.readouterr().out == "NAME  ANYTHING\n"
