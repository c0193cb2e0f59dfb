"""Fixtures of the integration tests: a container on the test's own schema, without projector threads
(tests drive the runners and processes themselves)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from entrypoints.bootstrap import Container, build

if TYPE_CHECKING:
    from collections.abc import Iterator

    from entrypoints.settings import Settings


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    built = build(settings, projectors=False)
    yield built
    built.close()
