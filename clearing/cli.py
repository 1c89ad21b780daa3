"""`clearing` command line: serve, status, demo-config, demo, settle, journal verify /
backup / restore."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from clearing.config import Config, dump_config, load_config
from clearing.democity import demo_config
from clearing.errors import ClearingError
from clearing.logs import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
journal_app = typer.Typer(no_args_is_help=True, help="Journal tools for operators.")
app.add_typer(journal_app, name="journal")


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
    raise typer.Exit(2)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    listen: Annotated[str | None, typer.Option(help="override [server] listen")] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="override metrics_listen")] = None,
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
    from clearing.demo import run_demo

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
    from clearing.verify import verify_journal

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
    from clearing.backup import backup

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
    from clearing.backup import restore
    from clearing.verify import verify_journal

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
) -> None:
    """Health, journal position, last settlement, deny-list version of a running server."""
    from clearing.status import report
    from clearing.tls import ClientTls

    try:
        server = _config(config, None).server
        tls = ClientTls.from_files(ca, cert, key) if ca or cert else None
    except ClearingError as exc:
        _fail(exc)
    text, serving = report(
        target or server.listen,
        metrics or f"http://{server.metrics_listen}/metrics",
        tls.credentials() if tls else None,
    )
    typer.echo(text)
    if not serving:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
