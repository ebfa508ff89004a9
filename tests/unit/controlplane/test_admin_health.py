"""The admin API's one-word endpoint health, which `localmesh status` shows."""

from __future__ import annotations

import pytest

from localmesh.runtime.controlplane.admin import endpoint_health

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("endpoint", "word"),
    [
        ({"address": "a:1", "healthy": True, "ejected": False}, "healthy"),
        ({"address": "a:1", "healthy": False, "ejected": False}, "unhealthy"),
        ({"address": "a:1", "healthy": True, "ejected": True}, "ejected"),
        ({"address": "a:1"}, "unknown"),
    ],
)
def test_endpoint_health_words(endpoint: dict[str, object], word: str) -> None:
    assert endpoint_health(endpoint) == word
