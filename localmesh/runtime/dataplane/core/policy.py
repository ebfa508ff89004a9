"""Authorization: Istio's AuthorizationPolicy semantics for calls to a service.

For a target service: any matching DENY policy refuses the call; otherwise, if the target
has ALLOW policies, one of them must match; a target without policies allows everything.

A policy's ``sources`` name callers by service name, client name (ingress client certs) or
SPIFFE principal; ``*`` means any identified caller and a leading or trailing ``*`` is a
suffix/prefix wildcard, as in Istio's ``principals``. The ``unknown`` caller matches only
policies without sources.

TCP connections have no path or method. As in Istio, an ALLOW rule that needs HTTP fields
never matches a TCP connection, and a DENY rule with HTTP fields denies it (the safe side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from localmesh.config.model import AuthorizationPolicy, PolicyAction
from localmesh.runtime.dataplane.core.routing import BytesMatch

UNKNOWN: Final = "unknown"
_MEMO_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a service name or client name, and its principal if it has one."""

    name: str
    principal: str = ""

    @classmethod
    def service(cls, name: str, trust_domain: str) -> Caller:
        if name == UNKNOWN:
            return UNKNOWN_CALLER
        return cls(name, f"spiffe://{trust_domain}/svc/{name}")


UNKNOWN_CALLER: Final = Caller(UNKNOWN)


class _SourceMatch:
    __slots__ = ("any", "exact", "prefixes", "suffixes")

    def __init__(self, entries: Iterable[str]) -> None:
        entries = tuple(entries)
        self.any = "*" in entries
        self.exact = frozenset(e for e in entries if "*" not in e)
        self.prefixes = tuple(e[:-1] for e in entries if e.endswith("*") and e != "*")
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("*") and e != "*")

    def __call__(self, caller: Caller) -> bool:
        if caller.name == UNKNOWN and not caller.principal:
            return False
        if self.any:
            return True
        for ident in (caller.name, caller.principal):
            if not ident:
                continue
            if ident in self.exact:
                return True
            if any(ident.startswith(p) for p in self.prefixes):
                return True
            if any(ident.endswith(s) for s in self.suffixes):
                return True
        return False


class _Rule:
    __slots__ = ("methods", "name", "paths", "sources")

    def __init__(self, policy: AuthorizationPolicy) -> None:
        self.name = policy.name
        self.sources = _SourceMatch(policy.sources) if policy.sources else None
        self.paths = tuple(BytesMatch(p) for p in policy.paths)
        self.methods = frozenset(m.upper().encode() for m in policy.methods)

    @property
    def http_only(self) -> bool:
        return bool(self.paths or self.methods)

    def matches(self, caller: Caller, method: bytes, path: bytes) -> bool:
        if self.sources is not None and not self.sources(caller):
            return False
        if self.methods and method not in self.methods:
            return False
        return not self.paths or any(p(path) for p in self.paths)

    def matches_tcp(self, caller: Caller, deny: bool) -> bool:
        if self.http_only and not deny:
            return False
        return self.sources is None or self.sources(caller)


class TargetPolicy:
    """The policies protecting one service; ``check`` returns why a call is refused, or None."""

    __slots__ = ("_allows", "_by_caller", "_denies", "_http_free")

    def __init__(self, policies: Iterable[AuthorizationPolicy]) -> None:
        rules = [(p.action, _Rule(p)) for p in policies]
        self._denies = tuple(r for a, r in rules if a is PolicyAction.DENY)
        self._allows = tuple(r for a, r in rules if a is PolicyAction.ALLOW)
        self._http_free = not any(r.http_only for _, r in rules)
        self._by_caller: dict[Caller, str | None] = {}

    def check(self, caller: Caller, method: bytes, path: bytes) -> str | None:
        if self._http_free:
            try:
                return self._by_caller[caller]
            except KeyError:
                if len(self._by_caller) >= _MEMO_LIMIT:  # many ingress clients: stay bounded
                    self._by_caller.clear()
                verdict = self._by_caller[caller] = self._decide(caller, method, path)
                return verdict
        return self._decide(caller, method, path)

    def _decide(self, caller: Caller, method: bytes, path: bytes) -> str | None:
        for rule in self._denies:
            if rule.matches(caller, method, path):
                return f"denied by policy '{rule.name}'"
        if self._allows and not any(r.matches(caller, method, path) for r in self._allows):
            return "no allow policy matches"
        return None

    def check_tcp(self, caller: Caller) -> str | None:
        for rule in self._denies:
            if rule.matches_tcp(caller, deny=True):
                return f"denied by policy '{rule.name}'"
        if self._allows and not any(r.matches_tcp(caller, deny=False) for r in self._allows):
            return "no allow policy matches"
        return None


def compile_policies(policies: Iterable[AuthorizationPolicy]) -> dict[str, TargetPolicy]:
    """Target service -> its policies; services absent from the map allow everything."""
    by_target: dict[str, list[AuthorizationPolicy]] = {}
    for policy in policies:
        for target in policy.to:
            by_target.setdefault(target, []).append(policy)
    return {target: TargetPolicy(ps) for target, ps in by_target.items()}
