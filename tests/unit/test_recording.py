"""The recording writer: every intent of a projection's writer, recorded by name, nothing applied."""

from __future__ import annotations

import uuid

import pytest

from projections.notifications import NotificationsProjection, NotificationsWriter
from projections.queues import QueuesProjection, QueuesWriter
from projections.recording import Call, Recording, recording_writer, writer_interface
from projections.stripe import StripeProjection, StripeWriter


def test_each_projection_names_its_writer() -> None:
    assert writer_interface(QueuesProjection()) is QueuesWriter
    assert writer_interface(NotificationsProjection()) is NotificationsWriter
    assert writer_interface(StripeProjection()) is StripeWriter


def test_calls_are_recorded_by_name_with_the_position() -> None:
    recording = Recording(position=7)
    writer = recording_writer(QueuesWriter, recording)
    queue_id = uuid.uuid4()
    writer.entry_joined(queue_id, "e1", "bob", 3, at=100)
    writer.queue_closed(queue_id, 200)
    assert recording.take() == [
        Call(7, "entry_joined", {"queue_id": queue_id, "entry_id": "e1", "user_id": "bob", "seq": 3, "at": 100}),
        Call(7, "queue_closed", {"queue_id": queue_id, "at": 200}),
    ]
    assert recording.calls == []


def test_a_call_that_does_not_fit_the_interface_fails_as_the_real_writer_would() -> None:
    writer = recording_writer(StripeWriter, Recording())
    with pytest.raises(TypeError):
        writer.account_registered("acct_1", "extra")  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        writer.no_such_intent()  # type: ignore[attr-defined]
