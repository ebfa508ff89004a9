"""The small value languages: durations, percentages, sizes, host names."""

from __future__ import annotations

import pytest

from localmesh.config.values import (
    format_duration,
    is_hostname,
    parse_duration,
    parse_percent,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1h2m3s4ms", 3723.004),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "s", "1m1h", "2s2s", "1d", "-1s", "1.s", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|units"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.025, 0.5, 2.0, 60.0, 5400.0, 86400.0, 61.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    assert format_duration(5400.0) == "1h30m"


@pytest.mark.parametrize(
    ("text", "value"), [("5", 5.0), ("5%", 5.0), ("12.5 %", 12.5), ("0", 0.0), ("100%", 100.0)]
)
def test_percents(text: str, value: float) -> None:
    assert parse_percent(text) == value


@pytest.mark.parametrize("text", ["101", "-1", "five%", "%", "5%%"])
def test_bad_percents(text: str) -> None:
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(text)


def test_sizes() -> None:
    assert parse_size("64KiB") == 65536
    assert parse_size("1MiB") == 1024**2
    assert parse_size("10MB") == 10_000_000
    assert parse_size("512") == 512
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("lots")


def test_hostnames() -> None:
    assert is_hostname("shop.localhost")
    assert is_hostname("*.localhost", wildcard=True)
    assert not is_hostname("*.localhost")
    assert not is_hostname("a..b")
    assert not is_hostname("-a.localhost")
