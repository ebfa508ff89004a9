"""Static reasoning about route matches: which match takes every request, which covers another.

Used by validation (a route after a catch-all can never match: an error) and by
``analyze`` (a route whose every match is covered by earlier routes: a warning). The
reasoning is conservative: ``covers`` answers True only when it is certain, so a
regex is only known to cover what it equals.
"""

from __future__ import annotations

from localmesh.config.model import (
    HeaderMatch,
    MatchKind,
    QueryMatch,
    RequestMatch,
    Route,
    StringMatch,
)

_MATCH_ALL_REGEXES = frozenset({".*", "/.*", "^.*$", "^/.*$", ".*$", "^.*"})


def path_matches_all(path: StringMatch | None) -> bool:
    """True when a path condition holds for every request path (which all start with /)."""
    if path is None:
        return True
    if path.kind is MatchKind.PREFIX:
        return path.value in ("", "/")
    if path.kind is MatchKind.REGEX:
        return path.value in _MATCH_ALL_REGEXES
    return False


def is_catch_all(match: RequestMatch) -> bool:
    return (
        path_matches_all(match.path)
        and not match.methods
        and not match.headers
        and not match.query
        and not match.sources
    )


def route_is_catch_all(route: Route) -> bool:
    """No matches means 'match everything', like an Istio http route without ``match``."""
    return not route.matches or any(is_catch_all(m) for m in route.matches)


def _string_covers(a: StringMatch | None, b: StringMatch | None) -> bool:
    """Every value ``b`` accepts, ``a`` accepts too."""
    if a is None:
        return True
    if b is None:
        return False
    if a.kind is MatchKind.PREFIX and b.kind in (MatchKind.PREFIX, MatchKind.EXACT):
        return b.value.startswith(a.value)
    return a.kind is b.kind and a.value == b.value


def _path_covers(a: StringMatch | None, b: StringMatch | None) -> bool:
    return path_matches_all(a) or _string_covers(a, b)


def _header_covers(a: HeaderMatch, bs: tuple[HeaderMatch, ...]) -> bool:
    for b in bs:
        if b.name != a.name or b.invert != a.invert:
            continue
        if a.invert:
            if a.match == b.match:
                return True
        elif _string_covers(a.match, b.match):
            return True
    return False


def _query_covers(a: QueryMatch, bs: tuple[QueryMatch, ...]) -> bool:
    return any(b.name == a.name and _string_covers(a.match, b.match) for b in bs)


def match_covers(a: RequestMatch, b: RequestMatch) -> bool:
    """Every request ``b`` matches, ``a`` matches too (so ``b`` after ``a`` is dead)."""
    if not _path_covers(a.path, b.path):
        return False
    if a.methods and not (b.methods and set(b.methods) <= set(a.methods)):
        return False
    if a.sources and not (b.sources and set(b.sources) <= set(a.sources)):
        return False
    if not all(_header_covers(h, b.headers) for h in a.headers):
        return False
    return all(_query_covers(q, b.query) for q in a.query)


def shadowing_routes(earlier: list[Route], route: Route) -> list[Route]:
    """The earlier routes that together take every request ``route`` matches; [] if none do."""
    if not route.matches:
        found = [r for r in earlier if route_is_catch_all(r)]
        return found[:1]
    used: list[Route] = []
    for m in route.matches:
        hit = next(
            (r for r in earlier if not r.matches or any(match_covers(e, m) for e in r.matches)),
            None,
        )
        if hit is None:
            return []
        if hit not in used:
            used.append(hit)
    return used
