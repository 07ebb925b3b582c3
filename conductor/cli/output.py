"""How results are printed: ``-f table|json|yaml|value`` and ``-c COLUMN``, as the OpenStack CLI does.

* ``table`` (the default): an item as aligned ``field  value`` lines, a list
  as a table with a header;
* ``json`` / ``yaml``: the object as the API answered it (every field), or
  only the fields of ``-c``;
* ``value``: bare values for shell scripts: an item's fields one per line, a
  list's rows one per line with the fields separated by spaces, no header.

``-c`` (repeatable) picks the fields, in its order; a field the object does
not have is a usage error naming those it has.  Objects and lists inside a
field are printed as JSON in ``table`` and ``value`` (without spaces in ``value``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click

FORMATS = ("table", "json", "yaml", "value")


class Output:
    """Where results go, in the chosen format and columns."""

    def __init__(self, fmt: str = "table", columns: Sequence[str] = ()) -> None:
        if fmt not in FORMATS:
            raise click.UsageError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        self.format = fmt
        self.columns = list(columns)

    @property
    def machine(self) -> bool:
        """Whether stdout is for a program (json, yaml, value): messages for people go to stderr."""
        return self.format != "table"

    def item(self, data: dict[str, Any], keys: list[str] | None = None) -> None:
        """Print one object; ``keys`` are the fields ``table`` and ``value`` show without ``-c``."""
        if self.columns:
            fields = self._chosen(data.keys())
        elif self.format in ("json", "yaml"):
            self._dump(data)
            return
        else:
            fields = keys or list(data)
        if self.format in ("json", "yaml"):
            self._dump({f: data.get(f) for f in fields})
        elif self.format == "value":
            for field in fields:
                click.echo(_cell(data.get(field), compact=True))
        else:
            width = max((len(f) for f in fields), default=0)
            for field in fields:
                click.echo(f"{field:<{width}}  {_cell(data.get(field))}".rstrip())

    def table(self, rows: list[dict[str, Any]], columns: list[str], raw: Any = None) -> None:
        """Print a list of objects; ``columns`` are those ``table`` and ``value`` show without ``-c``.

        ``raw`` is what json and yaml print without ``-c`` (default: ``rows``).
        """
        if self.columns:
            known: set[str] = set(columns)
            for row in rows:
                known.update(row)
            chosen = self._chosen(known if rows else self.columns)
        elif self.format in ("json", "yaml"):
            self._dump(raw if raw is not None else rows)
            return
        else:
            chosen = columns
        if self.format in ("json", "yaml"):
            self._dump([{c: row.get(c) for c in chosen} for row in rows])
            return
        cells = [[_cell(row.get(c), compact=self.format == "value") for c in chosen] for row in rows]
        if self.format == "value":
            for line in cells:
                click.echo(" ".join(line))
            return
        widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(chosen)]
        click.echo("  ".join(c.upper().ljust(w) for c, w in zip(chosen, widths, strict=True)).rstrip())
        for line in cells:
            click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())

    def check_columns(self, available: Iterable[str]) -> None:
        """Refuse a ``-c`` field that is not in ``available`` before anything is done (a usage error)."""
        if self.columns:
            self._chosen(available)

    def _chosen(self, available: Iterable[str]) -> list[str]:
        """The fields of ``-c`` as the object names them (case does not matter)."""
        by_name = {name.lower(): name for name in available}
        unknown = [c for c in self.columns if c.lower() not in by_name]
        if unknown:
            raise click.UsageError(
                f"no field {', '.join(unknown)} here (-c); fields: {', '.join(sorted(by_name.values()))}"
            )
        return [by_name[c.lower()] for c in self.columns]

    def _dump(self, data: Any) -> None:
        if self.format == "yaml":
            # PyYAML loads only when YAML is asked for: the CLI starts fast.
            import yaml

            click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n"))
        else:
            click.echo(json.dumps(data, indent=2))


def _cell(value: Any, compact: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":")) if compact else json.dumps(value)
    return str(value)
