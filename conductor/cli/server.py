"""Server commands: ``up``, ``api``, ``worker``, ``callback-worker``, ``db``, ``demo`` and ``settings``.

Imports of the server side happen inside the commands so that client
commands stay fast.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.

_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (SQLite file, embedded Redis, logs). "
    "Default: $CONDUCTOR_DATA_DIR or ~/.local/share/conductor.",
)


def _settings(**overrides: Any) -> Any:
    from conductor.exceptions import InvalidInput
    from conductor.logs import FORMATS
    from conductor.settings import load

    try:
        loaded = load(overrides)
    except InvalidInput as exc:
        raise click.ClickException(exc.message) from None
    if loaded.log_format not in FORMATS:
        raise click.ClickException(f"Setting log_format must be one of {', '.join(FORMATS)}, "
                                   f"not {loaded.log_format!r}.")
    return loaded


@click.command()
@click.option("--host", default=None, help="API bind address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="API port [6385].")
@_data_dir
@click.option("--workers", type=int, default=None, help="Conductor worker processes [1].")
@click.option("--api-workers", type=int, default=None, help="API processes [2].")
@click.option("--callback-workers", type=int, default=None, help="Callback worker processes [1].")
@click.option("--dhcp-interface", default=None, metavar="IF",
              help="Run dnsmasq for network boot on this interface (with --dhcp-range) [none].")
@click.option("--dhcp-range", default=None, metavar="FIRST,LAST",
              help="The IPv4 addresses dnsmasq leases, e.g. 192.168.50.100,192.168.50.200.")
def up(host: str | None, port: int | None, data_dir: Path | None, workers: int | None,
       api_workers: int | None, callback_workers: int | None, dhcp_interface: str | None,
       dhcp_range: str | None) -> None:
    """Run the API, conductor and callback workers on this box (embedded Redis and SQLite by default).

    With --dhcp-interface and --dhcp-range, also dnsmasq: DHCP and TFTP for
    the nodes booting from the network, and only for them.
    """
    from conductor import logs
    from conductor.exceptions import InvalidInput
    from conductor.supervisor import Supervisor

    settings = _settings(api_host=host, api_port=port, data_dir=data_dir, workers=workers,
                         api_workers=api_workers, callback_workers=callback_workers,
                         dhcp_interface=dhcp_interface, dhcp_range=dhcp_range)
    logs.configure(settings)
    supervisor = Supervisor(settings)

    def _stop(signum: int, _frame: Any) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        supervisor.start()
        click.echo(f"Conductor API   {supervisor.url}   (docs {supervisor.url}/docs)")
        click.echo(f"Dashboard       {supervisor.url}/ui/   (sign in with a token, e.g. the admin token below)")
        click.echo(f"Data directory  {settings.data_dir}   (logs in {settings.data_dir / 'logs'})")
        if settings.auth_enabled:
            state = "new" if supervisor.new_admin_token else "kept"
            click.echo(f"Admin token     {settings.admin_token_file}   ({state}; the CLI of this user sends it "
                       f"to {supervisor.url} by itself)")
        else:
            click.echo("Authentication  OFF (auth_enabled = false; loopback only)")
        click.echo(f"Workers         {settings.workers} (+{settings.callback_workers} for callbacks); "
                   f"Redis {'embedded' if supervisor.redis else _without_password(settings.redis_url)}")
        if supervisor.dhcp is not None:
            dhcp = supervisor.dhcp
            click.echo(f"DHCP            dnsmasq on {dhcp.interface}, {dhcp.first}-{dhcp.last}; iPXE is sent "
                       f"{dhcp.boot_url}   (log {settings.data_dir / 'logs' / 'dnsmasq.log'})")
        click.echo("Press Ctrl-C to stop.")
        supervisor.watch()
    except (RuntimeError, InvalidInput) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    finally:
        if supervisor.children:  # not when it refused to start
            click.echo("Stopping...", err=True)
        supervisor.stop()


@click.command()
@click.option("--host", default=None, help="Bind address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [6385].")
@click.option("--api-workers", type=int, default=None, help="Processes [2].")
@_data_dir
def api(host: str | None, port: int | None, api_workers: int | None, data_dir: Path | None) -> None:
    """Run the REST API (gunicorn)."""
    from conductor import tls
    from conductor.api import check_auth_settings
    from conductor.exceptions import InvalidInput
    from conductor.gunicorn_app import serve

    settings = _settings(api_host=host, api_port=port, api_workers=api_workers, data_dir=data_dir)
    try:
        check_auth_settings(settings)
        tls.check(settings)
    except InvalidInput as exc:
        raise click.ClickException(exc.message) from None
    _exit_with_supervisor()
    serve(settings)


@click.command()
@click.option("--workers", type=int, default=None, help="Worker processes [1].")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (for tests and scripts).")
@_data_dir
def worker(workers: int | None, burst: bool, data_dir: Path | None) -> None:
    """Run conductor worker(s): take queued requests and drive the hardware."""
    settings = _settings(workers=workers, data_dir=data_dir)
    _exit_with_supervisor()
    _run_workers("conductor", settings.workers, settings, burst)


@click.command("callback-worker")
@click.option("--workers", type=int, default=None, help="Callback worker processes [1].")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty (for tests and scripts).")
@_data_dir
def callback_worker(workers: int | None, burst: bool, data_dir: Path | None) -> None:
    """Run callback worker(s): deliver signed callbacks, with retries."""
    settings = _settings(callback_workers=workers, data_dir=data_dir)
    _exit_with_supervisor()
    _run_workers("callbacks", settings.callback_workers, settings, burst)


def _exit_with_supervisor() -> None:
    """Under ``conductor up``: stop when the supervisor dies, whatever killed it."""
    import os

    from conductor import procs

    supervisor = os.environ.pop("CONDUCTOR_SUPERVISOR_PID", "")
    if supervisor.isdigit():
        procs.exit_with_parent(int(supervisor))


def _run_workers(kind: str, count: int, settings: Any, burst: bool) -> None:
    """Run ``count`` workers of ``kind`` (in this process when just one)."""
    import multiprocessing
    import os

    if count <= 1:
        _worker_child(kind, settings, burst)
        return
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(target=_worker_child, args=(kind, settings, burst, os.getpid()),
                      name=f"worker-{i}" if kind == "conductor" else f"callback-worker-{i}")
        for i in range(count)
    ]
    for proc in procs:
        proc.start()

    def _forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid and proc.is_alive():
                proc.terminate() if signum == signal.SIGTERM else _interrupt(proc.pid)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for proc in procs:
        proc.join()
    sys.exit(max((p.exitcode or 0) for p in procs))


def _interrupt(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGINT)


def _worker_child(kind: str, settings: Any, burst: bool, parent_pid: int | None = None) -> None:
    from conductor import logs, procs
    from conductor.exceptions import InvalidInput

    logs.configure(settings)
    if parent_pid is not None:  # one of several: it dies with the process that started it
        procs.exit_with_parent(parent_pid)
    if kind == "callbacks":
        from conductor.callbacks import worker as callback_worker_module

        try:
            callback_worker_module.run(settings, burst=burst)
        except InvalidInput as exc:
            raise click.ClickException(exc.message) from None
        return
    from conductor.engine import worker as engine_worker

    engine_worker.run(settings, burst=burst)


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@_data_dir
def db_upgrade(revision: str, data_dir: Path | None) -> None:
    """Create or upgrade the schema (Alembic)."""
    from conductor import database, logs

    settings = _settings(data_dir=data_dir)
    logs.setup("WARNING")
    database.upgrade(settings.sqlalchemy_url, revision)
    click.echo(f"Schema at {database.current_revision(settings.sqlalchemy_url)}.")


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for printing)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@click.command()
@click.option("--nodes", "count", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Simulated BMCs (ipmi nodes).")
@click.option("--exit", "exit_after", is_flag=True, help="Stop once the script is done (default: run until Ctrl-C).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="An empty data directory to use. Default: $CONDUCTOR_DATA_DIR, else a new temporary one.")
@click.option("--port", type=int, default=6385, show_default=True, help="API port (another free one if taken).")
@click.option("--boot-delay", type=float, default=1.5, show_default=True,
              help="Seconds a simulated agent takes to boot.")
@click.option("--work-duration", type=float, default=1.0, show_default=True,
              help="Seconds a simulated agent takes per command (write image, erase, inspect).")
@click.option("--vm", "vms", type=click.IntRange(1, 16), default=None,
              help="Instead: N QEMU virtual machines behind simulated BMCs, really network-booted, "
                   "inspected, cleaned and deployed (builds the agent ramdisk and a disk image first).")
@click.option("--vm-accel", type=click.Choice(["tcg", "kvm", "auto"]), default="tcg", show_default=True,
              help="With --vm: QEMU's accelerator (auto: KVM if a probe boots with it).")
def demo(count: int, exit_after: bool, data_dir: Path | None, port: int, boot_delay: float,
         work_duration: float, vms: int | None, vm_accel: str) -> None:
    """Run the service with simulated BMCs and agents; deploy them all under a live view.

    With --vm N the nodes are QEMU virtual machines and the agent is the
    real ramdisk (needs qemu-system-x86, ipxe-qemu and a Debian mirror).
    Uses a new temporary data directory unless --data-dir (or
    $CONDUCTOR_DATA_DIR) names one.
    """
    import os

    from conductor.demo import Demo, DemoError

    chosen = data_dir or (Path(os.environ["CONDUCTOR_DATA_DIR"]) if os.environ.get("CONDUCTOR_DATA_DIR") else None)
    run: Demo
    if vms:
        # The VM story and QEMU's machinery load only for --vm.
        from conductor.vmlab import VmDemo

        run, count = VmDemo(vms, data_dir=chosen, port=port, accel=vm_accel), vms
    else:
        run = Demo(nodes=count, data_dir=chosen, port=port, boot_delay=boot_delay, work_duration=work_duration)
    stopping = {"flag": False}

    def _stop(signum: int, _frame: Any) -> None:
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        what = f"{count} QEMU VMs behind simulated BMCs" if vms else f"{count} simulated BMCs"
        run.console.print(f"Starting {what} and the service in {run.data_dir} ...")
        run.start()
        run.console.print(run.dashboard(), markup=False, highlight=False, soft_wrap=True)
        summary = run.run_script()
        run.print_summary(summary)
        if not exit_after:
            run.console.print("The service keeps running; press Ctrl-C to stop.")
            signal.pause()
    except KeyboardInterrupt:
        pass
    except (DemoError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        run.console.print("Stopping...")
        run.stop()


@click.command("settings")
@_data_dir
@click.option("--group", default=None, metavar="GROUP",
              help="Only this subsystem's settings (storage, api, queue, throttle, ipmi, deploy, webhooks, ...).")
@click.option("--show-secrets", is_flag=True, help="Print database_url, redis_url and secret_key as they are.")
def settings_command(data_dir: Path | None, group: str | None, show_secrets: bool) -> None:
    """Print the settings in force on this host, by subsystem, in the form of conductor.toml.

    They are what ``up``, ``api`` and ``worker`` started here would use: the
    defaults, the config file and the ``CONDUCTOR_*`` environment.  A secret
    that is set is printed as a comment unless --show-secrets.
    """
    import json

    from conductor.settings import Group

    loaded = _settings(data_dir=data_dir)
    try:
        groups = [Group(group)] if group else list(Group)
    except ValueError:
        raise click.BadParameter(f"not one of {', '.join(Group)}", param_hint="--group") from None
    values, masked = loaded.grouped(show_secrets=True), loaded.grouped()
    blocks = []
    for each in groups:
        lines = [f"# {each}"]
        for name, value in values[each].items():
            if masked[each][name] != value and not show_secrets:
                lines.append(f"# {name} = (set; --show-secrets prints it)")
            elif isinstance(value, bool):
                lines.append(f"{name} = {str(value).lower()}")
            elif isinstance(value, int | float):
                lines.append(f"{name} = {value!r}")
            else:
                lines.append(f"{name} = {json.dumps(str(value))}")
        blocks.append("\n".join(lines))
    click.echo("\n\n".join(blocks))


@click.command("install-units")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the unit files here. Default: /etc/systemd/system, or ~/.config/systemd/user with --user.")
@click.option("--user", is_flag=True, help="Units for systemd's user manager (systemctl --user), run as you.")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The EnvironmentFile every unit reads (written, mode 0600, if missing). "
                   "Default: /etc/conductor/conductor.env, or ~/.config/conductor/conductor.env with --user.")
@click.option("--run-as", default="conductor", show_default=True, help="The account system services run as.")
@click.option("--api/--no-api", default=True, show_default=True, help="Whether this host runs the API.")
@click.option("--workers", type=click.IntRange(0), default=None, help="Conductor workers on this host [workers].")
@click.option("--callback-workers", type=click.IntRange(0), default=None,
              help="Callback workers on this host [callback_workers].")
@_data_dir
def install_units(prefix: Path | None, user: bool, env_file: Path | None, run_as: str, api: bool,
                  workers: int | None, callback_workers: int | None, data_dir: Path | None) -> None:
    """Write systemd units for this host's share of the services, and conductor.target to start them.

    Then: `systemctl daemon-reload`, fill in the environment file, run
    `conductor db upgrade` on one host (or `systemctl start conductor-db-upgrade`),
    and `systemctl enable --now conductor.target` (add --user for user units).
    """
    from conductor import units

    settings = _settings(data_dir=data_dir)
    plan = units.Plan.default(
        user, prefix, env_file, run_as=run_as, api=api,
        workers=settings.workers if workers is None else workers,
        callback_workers=settings.callback_workers if callback_workers is None else callback_workers)
    try:
        written = units.write(plan, settings)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot write the units: {exc} (system units need root; or --user, or --prefix)") from None
    for path in written:
        click.echo(f"wrote {path}")
    systemctl = "systemctl --user" if user else "systemctl"
    click.echo(f"next: {systemctl} daemon-reload; edit {plan.env_file}; `conductor db upgrade` on one host; "
               f"{systemctl} enable --now {units.TARGET}")


COMMANDS = [up, api, worker, callback_worker, db, demo, settings_command, install_units]
