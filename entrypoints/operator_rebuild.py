"""The operator commands `rebuild` and `verify` (the work is in adapters/postgres/rebuild.py).

Both build the chosen read models again from the log into scratch tables while the live ones keep
serving. `verify` prints each row that differs as one JSON line and exits 1 if any does;
`rebuild` switches the live tables to the rebuilt rows in one transaction. Progress goes to stderr:
a bar on a terminal, a plain line at most every second otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click
import psycopg

from adapters.postgres.rebuild import SWITCHING, Outcome, Rebuild
from adapters.postgres.rebuild_memory import memory_writers
from adapters.postgres.rebuild_scratch import RebuildBusyError
from entrypoints.operator import DIFFERENT, OK, OperatorError, configured_database, operator_errors
from entrypoints.read_models import read_models
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress

INTERRUPTED = 130
PLAIN_EVERY = 1.0  # seconds between progress lines when stderr is not a terminal


class _Progress:
    """Renders the run's progress (log positions): a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.start: int | None = None
        self.last_line = 0.0
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} events/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, rate="-")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.start is None:
            self.start = done
        elapsed = time.monotonic() - self.started
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            label = f"{self.label} (switching)" if phase == SWITCHING else self.label
            self.bar.update(self.task, description=label, completed=done, total=max(total, 1), rate=f"{rate:,.0f}")
            return
        if phase == SWITCHING:
            click.echo(f"{self.label}: {done} events read, switching (live tables locked for writers)", err=True)
            return
        now = time.monotonic()
        if now - self.last_line < PLAIN_EVERY:
            return
        self.last_line = now
        share = 100 * done / total if total else 100.0
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
        click.echo(f"{self.label}: {done}/{total} events ({share:.0f}%), {rate:,.0f} events/s, ETA {eta}", err=True)


def _chosen(projection: str | None, *, every: bool) -> list[str]:
    names = list(read_models(Settings()))
    if every == (projection is not None):
        msg = f"give one PROJECTION ({', '.join(names)}) or --all"
        raise OperatorError(msg)
    if projection is not None and projection not in names:
        msg = f"unknown projection {projection!r} (known: {', '.join(names)})"
        raise OperatorError(msg)
    return names if every else [str(projection)]


def _run(command: str, names: list[str], *, apply: bool) -> Outcome:
    from entrypoints.bootstrap import TRACKING_TABLE, event_store

    with configured_database() as (settings, database):
        known = read_models(settings)
        models = [known[name] for name in names]
        app = event_store(settings, database, pool_size=2)
        try:
            with _Progress(f"{command} {'+'.join(names)}") as progress:
                twins = memory_writers(settings.notification_ttl * 1000)
                job = Rebuild(app, database, models, tracking_table=TRACKING_TABLE, progress=progress, twins=twins)
                return job.run(apply=apply)
        except (RebuildBusyError, TimeoutError) as error:
            raise OperatorError(str(error)) from None
        except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
            raise  # "run lineup migrate" / "cannot reach the database": said by operator_errors
        except psycopg.DatabaseError as error:  # e.g. a constraint the rebuilt rows break in the switch
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            msg = f"{command} failed, the live read models are unchanged: {first}"
            raise OperatorError(msg) from None
        except KeyboardInterrupt:
            click.echo(f"lineup: {command} interrupted; the live read models are unchanged", err=True)
            sys.exit(INTERRUPTED)
        finally:
            app.close()


def _summary(outcome: Outcome) -> str:
    by_kind: dict[str, int] = {}
    for (_table, kind), n in outcome.counts.items():
        by_kind[kind] = by_kind.get(kind, 0) + n
    total = sum(by_kind.values())
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items()))
    positions = ", ".join(f"{name} at {position}" for name, position in outcome.positions.items())
    rate = outcome.events / outcome.seconds if outcome.seconds else 0.0
    rows = f"{total} rows differed ({counts})" if total else "no row differed"
    return f"{positions}: {rows}; {outcome.events} events in {outcome.seconds:.1f} s ({rate:,.0f}/s)"


@click.command()
@click.argument("projection", required=False)
@click.option("--all", "every", is_flag=True, help="Every read model.")
@operator_errors
def rebuild(projection: str | None, every: bool) -> None:  # noqa: FBT001 - click passes flags so
    """Rebuild read models beside the live ones, then switch them in.

    Builds PROJECTION (or --all) from the log into scratch tables while HTTP and /ws keep serving,
    then changes only the live rows that differ, in one transaction, telling /ws subscribers.
    Interrupting it leaves the live read models untouched.
    """
    outcome = _run("rebuild", _chosen(projection, every=every), apply=True)
    click.echo(f"rebuilt {_summary(outcome)}")
    sys.exit(OK)


@click.command()
@click.argument("projection", required=False)
@click.option("--all", "every", is_flag=True, help="Every read model.")
@operator_errors
def verify(projection: str | None, every: bool) -> None:  # noqa: FBT001 - click passes flags so
    """Rebuild into scratch tables and print each row that differs.

    Each differing row is one JSON line: table, key, kind (missing: only the rebuild has it; extra:
    only the live table; different), live and rebuilt. Exit 0 when everything is equal.
    """
    outcome = _run("verify", _chosen(projection, every=every), apply=False)
    for difference in outcome.differences:
        line = {
            "table": difference.table,
            "key": difference.key,
            "kind": difference.kind,
            "live": difference.live,
            "rebuilt": difference.rebuilt,
        }
        click.echo(json.dumps(line, default=str))
    click.echo(f"verified {_summary(outcome)}", err=True)
    sys.exit(DIFFERENT if outcome.counts else OK)


COMMANDS: list[click.Command] = [rebuild, verify]
