"""Static route reasoning: catch-alls and covering matches (conservative by design)."""

from __future__ import annotations

from localmesh.config.matching import is_catch_all, match_covers, shadowing_routes
from localmesh.config.model import HeaderMatch, MatchKind, RequestMatch, Route, StringMatch


def prefix(p: str) -> StringMatch:
    return StringMatch(MatchKind.PREFIX, p)


def exact(p: str) -> StringMatch:
    return StringMatch(MatchKind.EXACT, p)


def test_catch_all() -> None:
    assert is_catch_all(RequestMatch())
    assert is_catch_all(RequestMatch(path=prefix("/")))
    assert is_catch_all(RequestMatch(path=StringMatch(MatchKind.REGEX, ".*")))
    assert not is_catch_all(RequestMatch(path=prefix("/api")))
    assert not is_catch_all(RequestMatch(methods=("GET",)))
    assert not is_catch_all(RequestMatch(sources=("web",)))


def test_covers() -> None:
    api = RequestMatch(path=prefix("/api"))
    assert match_covers(api, RequestMatch(path=prefix("/api/v2")))
    assert match_covers(api, RequestMatch(path=exact("/api/x"), methods=("GET",)))
    assert not match_covers(api, RequestMatch(path=prefix("/ap")))
    get = RequestMatch(methods=("GET", "HEAD"))
    assert match_covers(get, RequestMatch(methods=("GET",)))
    assert not match_covers(get, RequestMatch())
    user = RequestMatch(headers=(HeaderMatch("x-user", exact("a")),))
    assert match_covers(user, RequestMatch(path=prefix("/"), headers=user.headers))
    assert not match_covers(user, RequestMatch(headers=(HeaderMatch("x-user", exact("b")),)))
    regex = RequestMatch(path=StringMatch(MatchKind.REGEX, "/a/[0-9]+"))
    assert not match_covers(regex, RequestMatch(path=exact("/a/1")))  # not provable: no claim


def test_shadowing_needs_every_match_covered() -> None:
    first = Route("v2", matches=(RequestMatch(path=prefix("/v2")),))
    second = Route("v3", matches=(RequestMatch(path=prefix("/v3")),))
    both = Route(
        "both", matches=(RequestMatch(path=prefix("/v2/x")), RequestMatch(path=prefix("/v3/y")))
    )
    assert shadowing_routes([first, second], both) == [first, second]
    partly = Route(
        "partly", matches=(RequestMatch(path=prefix("/v2/x")), RequestMatch(path=prefix("/v4")))
    )
    assert shadowing_routes([first, second], partly) == []
    assert shadowing_routes([first], Route("all")) == []
    assert shadowing_routes([Route("all")], Route("later")) == [Route("all")]
