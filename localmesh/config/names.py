"""Which host name means which service, as each compose service sees it.

Pure, over Compose's normalised JSON. ``generate`` maps these names to VIPs in every
client's ``extra_hosts``; port inference (``config.ports``) resolves ``db:5432`` in a
client's environment with the same answer, so a port learned from a reference belongs to
the service the call will really reach.

A client can use, for each other upstream: its service name, its ``container_name`` or
the default container names (``<project>-<service>-<n>``), which Docker's DNS answers on
every network; the upstream's network aliases on the networks the client is on; and the
client's own ``links`` aliases. When a name means several upstreams, links win, then
service and container names, then aliases; ties go to the first upstream by name. The
client's own names never mean another service, and names the user maps in
``extra_hosts`` stay the user's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

Services = Mapping[str, Mapping[str, Any]]


def replicas(svc: Mapping[str, Any]) -> int:
    """How many containers a service runs (``scale``, else ``deploy.replicas``, else 1)."""
    scale = svc.get("scale")
    if isinstance(scale, int):
        return max(scale, 1)
    deploy = svc.get("deploy") or {}
    count = deploy.get("replicas") if isinstance(deploy, Mapping) else None
    return max(count, 1) if isinstance(count, int) else 1


def names_of(project: str, name: str, svc: Mapping[str, Any]) -> dict[str, set[str]]:
    """Network-independent names and per-network aliases: ``{"": {...}, net: {...}}``."""
    out: dict[str, set[str]] = {"": {name}}
    container_name = svc.get("container_name")
    if isinstance(container_name, str) and container_name:
        out[""].add(container_name)
    else:
        out[""].update(f"{project}-{name}-{i}" for i in range(1, replicas(svc) + 1))
    nets = svc.get("networks") or {}
    if isinstance(nets, Mapping):
        for net, cfg in nets.items():
            aliases = cfg.get("aliases") if isinstance(cfg, Mapping) else None
            if aliases:
                out.setdefault(str(net), set()).update(str(a) for a in aliases)
    return out


def networks_of(svc: Mapping[str, Any]) -> set[str]:
    return {str(n) for n in svc.get("networks") or {}}


def user_extra_hosts(svc: Mapping[str, Any]) -> set[str]:
    """Names the user maps in ``extra_hosts`` (list ``name=ip``/``name:ip`` or mapping)."""
    raw = svc.get("extra_hosts") or ()
    if isinstance(raw, Mapping):
        return {str(k) for k in raw}
    out: set[str] = set()
    for entry in raw:
        text = str(entry)
        sep = "=" if "=" in text else ":"
        out.add(text.split(sep, 1)[0])
    return out


class NameTable:
    """The names of a project's upstreams, and what each name means in each client."""

    def __init__(self, project: str, services: Services, upstreams: Collection[str]) -> None:
        self.services = services
        self.upstreams = sorted(upstreams)
        self.names = {n: names_of(project, n, services[n]) for n in self.upstreams}
        self.everywhere: dict[str, str] = {}
        for name in self.upstreams:
            for n in sorted(self.names[name][""]):
                self.everywhere.setdefault(n, name)
        self._routes: dict[str, dict[str, str]] = {}

    def all_names(self, upstream: str) -> set[str]:
        return set().union(*self.names[upstream].values())

    def claims(self, client: str) -> dict[str, tuple[str, ...]]:
        """Every name a client may use for another upstream, sorted, with the upstreams of
        the best rank that claim it (more than one is a conflict: the first wins)."""
        svc = self.services[client]
        own = self.all_names(client) if client in self.names else set()
        nets = networks_of(svc)
        ranks: dict[str, dict[str, int]] = {}  # name -> {upstream: rank}; lower wins
        for link in svc.get("links") or ():
            target, _, alias = str(link).partition(":")
            if target in self.names and target != client:
                ranks.setdefault(alias or target, {})[target] = 0
        for upstream in self.upstreams:
            if upstream == client:
                continue
            for net, group in self.names[upstream].items():
                if net and net not in nets:
                    continue
                rank = 2 if net else 1
                for n in group:
                    current = ranks.setdefault(n, {})
                    current[upstream] = min(current.get(upstream, rank), rank)
        out: dict[str, tuple[str, ...]] = {}
        for n, owners in sorted(ranks.items()):
            if n in own:
                continue
            best = min(owners.values())
            out[n] = tuple(sorted(u for u, r in owners.items() if r == best))
        return out

    def route(self, client: str) -> dict[str, str]:
        """The names a meshed client sends through the mesh, and the upstream of each."""
        if client not in self._routes:
            user = user_extra_hosts(self.services[client])
            self._routes[client] = {
                n: winners[0] for n, winners in self.claims(client).items() if n not in user
            }
        return self._routes[client]

    def owner(self, client: str, host: str) -> str | None:
        """The upstream ``host`` means in ``client``. Names a client does not route (its own,
        any in an unmeshed client) fall back to service and container names, which mean
        the same everywhere."""
        routed = self.route(client).get(host) if client in self.names else None
        return routed or self.everywhere.get(host)
