"""`clearing` command line: serve, status, demo-config, demo, settle, journal verify /
backup / restore. Amounts are printed in CNY (yuan, two decimals) or as integer fen
where a field says _fen.

\b
Exit status:
  0  done (status: the server is SERVING)
  1  a bug: an unexpected error (a traceback); please report it
  2  the command refused or failed (one "error: ..." line on stderr says why)
  3  status only: the server answered NOT_SERVING, or could not be reached
 64  usage error: an unknown command or option, a missing or malformed argument
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from clearing import __version__
from clearing.errors import ClearingError
from clearing.runtime.config import Config, dump_config, load_config
from clearing.runtime.logs import configure_logging
from clearing.tools.demo_city import demo_config

# 1 is left to Python's own exit on an uncaught exception: a traceback is a bug.
EXIT_FAILED = 2  # a ClearingError: bad configuration, damaged journal, refused settlement...
EXIT_NOT_SERVING = 3  # `status`: as LSB init scripts' status, "not running"
EXIT_USAGE = 64  # EX_USAGE (sysexits.h); click's own 2 is remapped in main()

# rich_markup_mode=None: help text is printed as written ("[server] data_dir" would be
# taken for a rich markup tag and vanish).
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)
journal_app = typer.Typer(
    no_args_is_help=True, help="Journal tools for operators.", rich_markup_mode=None
)
app.add_typer(journal_app, name="journal")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"clearing {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    pass


def _add_loadgen() -> None:
    """`clearing loadgen` is `python -m loadgen` (the same typer app)."""
    from loadgen.cli import app as loadgen_app

    app.add_typer(loadgen_app, name="loadgen")


_add_loadgen()

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="TOML file (default: the demo city)")
]
DataDirOption = Annotated[str | None, typer.Option("--data-dir", help="override [server] data_dir")]


def _config(path: str | None, data_dir: str | None) -> Config:
    config = load_config(path) if path else demo_config()
    if data_dir:
        config.server.data_dir = data_dir
    return config


def _fail(exc: ClearingError) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(EXIT_FAILED)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    listen: Annotated[str | None, typer.Option(help="override [server] listen")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="override [server] metrics_listen")
    ] = None,
    manual_clock: Annotated[
        bool, typer.Option("--manual-clock", help="testing and demos only: enable SetClock")
    ] = False,
) -> None:
    """Run the engine (with no --config: the built-in demo city in ./var)."""
    from clearing.server.app import run_server

    configure_logging()
    try:
        cfg = _config(config, data_dir)
        if listen:
            cfg.server.listen = listen
        if metrics_listen:
            cfg.server.metrics_listen = metrics_listen
        if manual_clock:
            cfg.server.manual_clock = True
        asyncio.run(run_server(cfg))
    except ClearingError as exc:
        _fail(exc)


@app.command("demo-config")
def demo_config_command() -> None:
    """Write the demo city as a configuration file to stdout."""
    sys.stdout.write(
        "# The demo city (SPEC §1). Its tokens and keys are derived from public names:\n"
        "# replace every token and key_hex before this file goes anywhere near production.\n\n"
    )
    sys.stdout.write(dump_config(demo_config()))


@app.command()
def demo(
    data_dir: Annotated[str, typer.Option(help="scratch data directory, wiped first")] = "var/demo",
) -> None:
    """Start a server on the demo city, send taps of every kind, show the outcomes."""
    from clearing.tools.demo import run_demo

    try:
        run_demo(data_dir)
    except ClearingError as exc:
        _fail(exc)


@app.command()
def settle(
    date: Annotated[str, typer.Option("--date", help="business date YYYY-MM-DD to settle")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Settle a business date offline, as RunSettlement does (the server must be stopped)."""
    from clearing.settlement.offline import settle_offline

    configure_logging()
    try:
        settled = asyncio.run(settle_offline(_config(config, data_dir), date))
    except ClearingError as exc:
        _fail(exc)
    typer.echo(settled)


@journal_app.command("verify")
def journal_verify(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Check the hash chain and replay every entry against its journaled answers."""
    from clearing.storage.verify import verify_journal

    try:
        report = verify_journal(_config(config, data_dir).server.data_dir)
    except ClearingError as exc:
        _fail(exc)
    typer.echo(report)


@journal_app.command("backup")
def journal_backup(
    target: Annotated[str, typer.Argument(help="a new or empty directory for the copy")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """A consistent hot copy of the journal and its checkpoints (the server may run)."""
    from clearing.storage.backup import backup

    try:
        server = _config(config, data_dir).server
        manifest = backup(server.data_dir, target, server.map_size_bytes)
    except ClearingError as exc:
        _fail(exc)
    typer.echo(
        f"backup OK: {target}, journal up to entry {manifest.last_seq} "
        f"(head {manifest.head_hash[:16]}…), {manifest.journal_bytes:,} bytes"
    )


@journal_app.command("restore")
def journal_restore(
    source: Annotated[str, typer.Argument(help="a directory written by `journal backup`")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Put a backup in place (the data directory must hold no journal), then verify it."""
    from clearing.storage.backup import restore
    from clearing.storage.verify import verify_journal

    target = _config(config, data_dir).server.data_dir
    try:
        manifest = restore(source, target)
        report = verify_journal(target)
    except ClearingError as exc:
        _fail(exc)
    typer.echo(f"restored the backup of {manifest.taken_at} into {target}\n{report}")


@app.command()
def status(
    config: ConfigOption = None,
    target: Annotated[str | None, typer.Option(help="gRPC address (default: listen)")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="/metrics URL (default: metrics_listen)")
    ] = None,
    ca: Annotated[str | None, typer.Option(help="TLS: the CA of the server's certificate")] = None,
    cert: Annotated[str | None, typer.Option(help="mutual TLS: a client certificate")] = None,
    key: Annotated[str | None, typer.Option(help="mutual TLS: its private key")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object: integer fen and counts, UTC times")
    ] = False,
) -> None:
    """Health, journal position, last settlement, deny-list version of a running server.
    Exit status 3 when it is not SERVING (or cannot be reached)."""
    from clearing.runtime.tls import ClientTls
    from clearing.tools.server_status import report, report_json

    try:
        server = _config(config, None).server
        tls = ClientTls.from_files(ca, cert, key) if ca or cert else None
    except ClearingError as exc:
        _fail(exc)
    text, serving = (report_json if as_json else report)(
        target or server.listen,
        metrics or f"http://{server.metrics_listen}/metrics",
        tls.credentials() if tls else None,
    )
    typer.echo(text)
    if not serving:
        raise typer.Exit(EXIT_NOT_SERVING)


def main() -> None:
    """The `clearing` command, with click's usage errors (its exit code 2) on EXIT_USAGE."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if show is None or exit_code is None:  # not click's: a bug, with its traceback
            raise
        show()  # click's message, as it prints it in standalone mode
        sys.exit(EXIT_USAGE if exit_code == 2 else exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
