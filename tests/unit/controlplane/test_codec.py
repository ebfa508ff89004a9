"""The model survives a JSON round trip; secrets never leave through redact()."""

from __future__ import annotations

import json

import pytest

from localmesh.config.model import MeshConfig, RetryPolicy, Service
from localmesh.runtime.controlplane.codec import REDACTED, decode, encode, redact
from tests.unit.controlplane.fixtures import rich_config


def test_round_trip_through_json_text_is_equal_including_positions() -> None:
    config = rich_config()
    text = json.dumps(encode(config))
    back = decode(MeshConfig, json.loads(text))
    assert back == config
    assert back.services[0].routes[0].position == config.services[0].routes[0].position
    assert back.services[0].routes[0].retries is not None
    assert back.services[0].routes[0].retries.retry_on == frozenset({"5xx", "reset"})


def test_missing_fields_take_the_model_defaults() -> None:
    """A state file written before a field existed still loads."""
    svc = decode(Service, {"name": "api"})
    assert svc == Service(name="api")
    assert decode(RetryPolicy, {"attempts": 5}).per_try_timeout is None


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (Service, {"name": 3}),
        (Service, {"name": "api", "ports": [{"port": "80"}]}),
        (Service, {"name": "api", "ports": [{"port": 80, "protocol": "udp"}]}),
        (RetryPolicy, {"attempts": True}),
        (Service, ["api"]),
    ],
)
def test_wrong_shapes_are_refused(cls: type, data: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by shape
        decode(cls, data)


def test_redact_hides_credential_headers_and_secret_keys_only() -> None:
    doc = redact(encode(rich_config()))
    text = json.dumps(doc)
    assert "upstream-secret" not in text
    assert "Bearer s3" not in text
    route = doc["services"][0]["routes"][0]
    assert route["request_headers"]["set"] == [["authorization", REDACTED], ["x-env", "dev"]]
    assert route["matches"][0]["headers"][0]["match"] == {"kind": "exact", "value": REDACTED}
    # names that merely look like secrets stay when they are not values of secrets
    assert doc["policies"][0]["sources"] == ["api"]
    assert redact({"sources": ["auth", "api"]}) == {"sources": ["auth", "api"]}
    assert redact({"environment": {"POSTGRES_PASSWORD": "x", "PGUSER": "u"}}) == {
        "environment": {"POSTGRES_PASSWORD": REDACTED, "PGUSER": "u"}
    }
    # a setting whose name looks secret is shown (it was redacted in /config)
    assert doc["mesh"]["peer_auth"] == "permissive"
    assert redact({"basic_auth": "u:p"}) == {"basic_auth": REDACTED}
