"""Operating points and online labels in the call log's database (router_ml.calllog.operating_points), on SQLite
and PostgreSQL: a point moves only from the version it was read at, the first ladder stored wins, and feedback on
the rows of the two answers a label compared is read back as that label's exact labels."""

from __future__ import annotations

import math

import pytest

from router_ml.calllog.operating_points import Label, OperatingPointStore
from router_ml.calllog.store import CallStore
from router_ml.online.controller import OperatingPoint
from call_rows import call_row


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else \
        f"sqlite:///{tmp_path / 'calls.db'}"
    s = CallStore(url, retry_delay=0.0)
    yield s
    s.close()


def _state(ladder: str, level: int = 0) -> dict:
    point = OperatingPoint(margins=(-math.inf, 0.0, math.inf))
    point.level = level
    return {**point.state(), "labels": [], "ladder": ladder}


def test_a_point_moves_only_from_the_version_it_was_read_at(store):
    book = OperatingPointStore(store.engine)
    assert book.point("acme") is None and book.points() == {}
    assert book.save("acme", _state("L1"), None)
    assert not book.save("acme", _state("L2"), None)  # another worker's ladder came first
    assert book.point("acme").state["ladder"] == "L1" and book.point("acme").version == 1
    assert book.save("acme", _state("L1", 1), 1)
    assert not book.save("acme", _state("L1", 2), 1)  # read at version 1, stored is at 2 now: refused
    stored = book.points()["acme"]
    assert (stored.state["level"], stored.version) == (1, 2)


def test_labels_come_back_per_level_with_the_feedback_of_their_answers(store):
    served = store.record(call_row(0, status="ok"))
    reference = store.record(call_row(1, status="ok", kind="shadow", judges=served))
    store.flush()
    book = OperatingPointStore(store.engine)
    book.add_labels("acme", "L1", [Label(1, served, served, reference, 0.9, 1.0, 20.0),
                                   Label(2, served, served, reference, 0.9, 1.0, 20.0),
                                   Label(2, served, reference, reference, 1.0, 1.0, 20.0)])
    book.add_labels("acme", "L0", [Label(1, served, served, reference, 0.0, 1.0, 20.0)])  # an older ladder's
    labels = book.labels("acme", "L1", 3, window=10)
    assert [len(level) for level in labels] == [0, 1, 2]
    assert labels[1][0][:2] == (0.9, 1.0) and math.isnan(labels[1][0][2]) and labels[1][0][4] == 20.0
    store.feedback(served, 0.0)
    store.feedback(reference, 1.0)
    level_2 = book.labels("acme", "L1", 3, window=10)[2]
    assert [label[2:4] for label in level_2] == [(0.0, 1.0), (1.0, 1.0)]
    assert book.labels("acme", "L1", 3, window=1)[2] == level_2[1:]  # the last ones
