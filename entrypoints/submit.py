"""Handing a command to the write path from a request handler."""

from __future__ import annotations

import random
import uuid

from litestar import Request
from litestar.datastructures import State
from litestar.security.jwt import Token

from domain.commands import Caller, Command
from domain.errors import QueueError
from entrypoints.bootstrap import Container

CallerRequest = Request[Caller, Token, State]


async def run(container: Container, command: Command) -> object:
    """Submit to the group committer; answer once the batch holding the command has committed."""
    outcome, _ = await container.committer.run(command)
    if isinstance(outcome, QueueError):
        raise outcome
    return outcome


def new_id() -> str:
    """A random (version 4) UUID without a syscall: uuid4() reads os.urandom, which drops and
    retakes the GIL on every join (6 % of a loaded worker's samples). `random` is seeded from
    os.urandom and reseeded in every child process; these ids need uniqueness, not secrecy."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))
