"""``conductor ramdisk build``: build the agent kernel and initramfs from Debian packages."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def ramdisk() -> None:
    """The agent ramdisk that deploys, cleans and inspects real machines."""


@ramdisk.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write agent.kernel and agent.initramfs [setting ramdisk_dir: <data dir>/ramdisk].")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where downloaded .deb files are kept between builds [~/.cache/conductor/ramdisk].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def build(ctx: click.Context, out_dir: Path | None, cache_dir: Path | None, as_json: bool) -> None:
    """Build DIR/agent.kernel and DIR/agent.initramfs; print their sha256 and sizes."""
    # Imported here so that other commands start without the builder.
    from conductor.ramdisk import build as builder
    from conductor.ramdisk.debs import PackageError
    from conductor.ramdisk.modules import UnknownModule
    from conductor.settings import load

    # `conductor --json ramdisk build` works too.
    as_json = as_json or bool(getattr(getattr(ctx.find_root().obj, "out", None), "as_json", False))
    # Where the API serves boot files from (setting ramdisk_dir).
    out_dir = out_dir or load().ramdisk_path
    cache_dir = cache_dir or builder.default_cache_dir()
    try:
        result = builder.build(out_dir, cache_dir, progress=None if as_json else click.echo)
    except (PackageError, UnknownModule, builder.BuildError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({
            "kernel": {"path": str(result.kernel.path), "size": result.kernel.size, "sha256": result.kernel.sha256},
            "initramfs": {"path": str(result.initramfs.path), "size": result.initramfs.size,
                          "sha256": result.initramfs.sha256},
            "kernel_release": result.kernel_version, "packages": list(result.packages),
            "modules": list(result.modules), "seconds": round(result.seconds, 2),
        }, indent=2))
        return
    click.echo(f"kernel {result.kernel_version}; {len(result.modules)} modules: {' '.join(result.modules)}")
    for art in (result.kernel, result.initramfs):
        click.echo(f"{art.sha256}  {art.size:>10,d}  {art.path}")
    click.echo(f"total {result.total_size / 1e6:.1f} MB in {result.seconds:.1f} s")
