"""The rotation schedule: 2/3 into a certificate's life, wall clock re-read at least each minute."""

from __future__ import annotations

import datetime as dt

import pytest

from localmesh.ca.rotation import MAX_SLEEP, next_wakeup, rotation_due

pytestmark = pytest.mark.unit

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_due_at_two_thirds_of_life() -> None:
    assert rotation_due(T0, T0 + dt.timedelta(hours=24)) == T0 + dt.timedelta(hours=16)
    assert rotation_due(T0, T0 + dt.timedelta(seconds=3)) == T0 + dt.timedelta(seconds=2)


def test_wakeup_is_the_earliest_due_capped() -> None:
    dues = [T0 + dt.timedelta(seconds=30), T0 + dt.timedelta(seconds=5)]
    assert next_wakeup(dues, T0) == 5.0
    assert next_wakeup([T0 + dt.timedelta(hours=16)], T0) == MAX_SLEEP


def test_overdue_wakes_at_once_and_nothing_sleeps_the_cap() -> None:
    assert next_wakeup([T0 - dt.timedelta(seconds=10)], T0) == 0.0
    assert next_wakeup([], T0) == MAX_SLEEP
