"""``conductor ramdisk build``, ``image`` and ``iso``: the agent ramdisk, a demo disk image, a bootable ISO."""

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


@ramdisk.command()
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("demo-disk.img"),
              show_default=True, help="The raw image to write (and FILE.gz beside it).")
@click.option("--marker", default="demo", show_default=True,
              help="The word the image prints after CONDUCTOR-DEMO-IMAGE-BOOTED when it boots.")
@click.option("--size", "size_mib", type=click.IntRange(8, 1024), default=None,
              help="Image size in MiB [the files plus 2 MiB, at least 16].")
@click.option("--gzip/--no-gzip", "compressed", default=True, show_default=True,
              help="Also write the gzip-compressed FILE.gz.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The ramdisk build's package cache [~/.cache/conductor/ramdisk].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def image(ctx: click.Context, out_file: Path, marker: str, size_mib: int | None, compressed: bool,
          cache_dir: Path | None, as_json: bool) -> None:
    """Build a small bootable raw disk image (Debian kernel + busybox, syslinux) for demos and tests.

    Booted, it prints "CONDUCTOR-DEMO-IMAGE-BOOTED MARKER" on its serial
    console (ttyS0) and powers off. Prints the path, size and sha256.
    """
    # Imported here so that other commands start without the builder.
    from conductor.ramdisk import build as builder
    from conductor.ramdisk import diskimage
    from conductor.ramdisk.debs import PackageError

    as_json = as_json or bool(getattr(getattr(ctx.find_root().obj, "out", None), "as_json", False))
    try:
        diskimage.check_marker(marker)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--marker") from None
    try:
        result = diskimage.build_image(out_file, cache_dir or builder.default_cache_dir(), marker, size_mib,
                                       compressed, progress=None if as_json else click.echo)
    except (PackageError, builder.BuildError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    arts = {"image": result.image, "gzip": result.compressed}
    if as_json:
        click.echo(json.dumps({
            **{key: art and {"path": str(art.path), "size": art.size, "sha256": art.sha256}
               for key, art in arts.items()},
            "marker": result.marker, "console_line": result.line, "kernel_release": result.kernel_release,
            "packages": list(result.packages), "seconds": round(result.seconds, 2),
        }, indent=2))
        return
    for art in arts.values():
        if art is not None:
            click.echo(f"{art.sha256}  {art.size:>10,d}  {art.path}")
    click.echo(f"kernel {result.kernel_release}; booted, it prints {result.line!r} on ttyS0 and powers off "
               f"({result.seconds:.1f} s)")


@ramdisk.command()
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("agent.iso"),
              show_default=True, help="The ISO to write (mode 0600: it may hold an agent token).")
@click.option("--kernel-args", default=None,
              help="The whole kernel command line baked into isolinux.cfg, e.g. 'console=ttyS0,115200 "
                   "conductor_api_url=URL conductor_node=UUID conductor_token=TOKEN' "
                   "[console=tty0 console=ttyS0,115200].")
@click.option("--ramdisk", "ramdisk_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where agent.kernel and agent.initramfs are [setting ramdisk_dir: <data dir>/ramdisk].")
@click.option("--volume-id", default=None, help="The ISO's volume id (A-Z, 0-9, _) [CONDUCTOR_AGENT].")
@click.option("--uefi/--no-uefi", default=None,
              help="Also boot under UEFI (GRUB) [when grub-mkimage and GRUB's EFI modules are installed].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def iso(ctx: click.Context, out_file: Path, kernel_args: str | None, ramdisk_dir: Path | None,
        volume_id: str | None, uefi: bool | None, as_json: bool) -> None:
    """Build a bootable ISO (BIOS isolinux, UEFI GRUB; CD-ROM or USB) of the built agent ramdisk, for virtual media.

    No DHCP boot script reaches a machine booted this way, so the agent's
    kernel arguments (conductor_api_url, conductor_node, conductor_token)
    go into the ISO. Prints the path, size and sha256.
    """
    # Imported here so that other commands start without the builder.
    from conductor.ramdisk import build as builder
    from conductor.ramdisk import iso as isobuilder
    from conductor.settings import load

    as_json = as_json or bool(getattr(getattr(ctx.find_root().obj, "out", None), "as_json", False))
    kernel_args = isobuilder.CONSOLE_ARGS if kernel_args is None else kernel_args
    volume_id = volume_id or isobuilder.DEFAULT_VOLUME_ID
    try:
        isobuilder.check_kernel_args(kernel_args)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--kernel-args") from None
    try:
        isobuilder.check_volume_id(volume_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--volume-id") from None
    ramdisk_dir = ramdisk_dir or load().ramdisk_path
    try:
        result = isobuilder.build_iso(out_file, ramdisk_dir / builder.KERNEL_NAME,
                                      ramdisk_dir / builder.INITRAMFS_NAME, kernel_args, volume_id,
                                      uefi=uefi)
    except isobuilder.IsoError as exc:
        raise click.ClickException(str(exc)) from exc
    art = result.image
    if as_json:
        click.echo(json.dumps({
            "iso": {"path": str(art.path), "size": art.size, "sha256": art.sha256},
            "kernel_args": result.kernel_args, "volume_id": result.volume_id, "uefi": result.uefi,
            "seconds": round(result.seconds, 3),
        }, indent=2))
        return
    click.echo(f"{art.sha256}  {art.size:>10,d}  {art.path}")
    if "conductor_node=" not in result.kernel_args:
        click.echo("note: no conductor_node= in the kernel arguments: the agent will wait, idle, once booted")
    click.echo(f"boots ({'BIOS and UEFI' if result.uefi else 'BIOS only'}) with: {result.kernel_args} "
               f"({result.seconds:.2f} s)")
