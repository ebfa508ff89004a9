"""Container mode: the mesh container takes over its upstreams' addresses and finds their peers.

``generate`` planned (``plan.json``) one virtual IP per upstream on the mesh network; every
client's ``/etc/hosts`` sends the upstream's names there. This module, run inside the mesh
container (``cap_add: [NET_ADMIN]``) before the data plane binds, makes that true:

1. **Addresses**: every VIP is added as a /32 on the interface that holds the mesh network,
   so listeners can bind ``VIP:port`` and the kernel answers ARP for it on the bridge.
2. **Interception**: for an upstream whose ports ``generate`` could not learn, a nat rule
   redirects every other TCP port of its VIP to the intercept listener (``INTERCEPT_PORT``),
   which reads the dialled address back with ``SO_ORIGINAL_DST``. The rules live in our own
   chain, flushed and refilled at each start, so a restart never stacks duplicates.
3. **Discovery** (``DnsDiscovery``): inside the mesh container Docker's DNS still answers
   with the real containers. ``<service>.<mesh network>`` returns the IP of every replica
   on the mesh network: those are both the **endpoints** of the service's cluster and the
   source addresses its calls arrive from, so one lookup per service gives the control
   plane its ``Discovered`` endpoints and caller identities. It re-resolves every few
   seconds, and at once when the data plane reports a failure (``trigger``), which is how a
   scaled-up replica or a restarted database is picked up. A lookup that fails (not "no
   such name") keeps the last answer and is reported per service (``failures``, /status).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmesh.compose.plan import MeshPlan
from localmesh.errors import ConfigError, Problem, RuntimeStartError
from localmesh.runtime.controlplane.compile import Discovered
from localmesh.runtime.snapshot import Endpoint

log = logging.getLogger("localmesh.container")

#: Where redirected connections for unknown ports arrive (Istio's outbound capture port).
INTERCEPT_PORT = 15001
#: The nat chain holding our rules; PREROUTING jumps to it.
NAT_CHAIN = "LOCALMESH"

Command = list[str]
#: A name's IPv4 addresses, () when none runs; raises ``OSError`` when the lookup fails.
Resolve = Callable[[str], Awaitable[tuple[str, ...]]]


def load_plan(path: Path) -> MeshPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            Problem(f"cannot read the mesh plan {path}: {exc.strerror}"),
            hint="container mode runs from the plan localmesh generate writes; "
            "mount .localmesh/plan.json at /etc/localmesh/plan.json",
        ) from None
    return MeshPlan.from_json(text, source=str(path))


# --- addresses and interception (decisions are pure; apply_commands runs them) ----------


def mesh_interface(plan: MeshPlan, addresses: Sequence[Mapping[str, Any]]) -> str:
    """The interface holding an address in the mesh subnet, from ``ip -j -4 addr`` output."""
    subnet = ipaddress.IPv4Network(plan.network.subnet)
    for link in addresses:
        for info in link.get("addr_info") or ():
            local = info.get("local")
            if local and ipaddress.IPv4Address(local) in subnet:
                return str(link["ifname"])
    raise RuntimeStartError(
        f"the mesh container has no address in the mesh network {plan.network.subnet}",
        hint=f"the localmesh service must join the '{plan.network.key}' network "
        "(regenerate with localmesh generate)",
    )


def network_commands(plan: MeshPlan, interface: str, intercept_port: int) -> list[Command]:
    """The ``ip`` and ``iptables`` commands that give this container the plan's VIPs."""
    cmds: list[Command] = [
        ["ip", "addr", "replace", f"{u.vip}/32", "dev", interface] for u in plan.upstreams
    ]
    nat = ["iptables", "-w", "-t", "nat"]
    cmds.append([*nat, "-F", NAT_CHAIN])
    for u in plan.upstreams:
        if not u.unknown_ports:
            continue
        rule = [*nat, "-A", NAT_CHAIN, "-d", f"{u.vip}/32", "-p", "tcp"]
        cmds += [[*rule, "--dport", str(p.port), "-j", "RETURN"] for p in u.ports]
        cmds.append([*rule, "-j", "REDIRECT", "--to-ports", str(intercept_port)])
    return cmds


def setup_network(plan: MeshPlan, intercept_port: int = INTERCEPT_PORT) -> str:
    """Own every VIP and install the interception rules; return the mesh interface."""
    shown = _run(["ip", "-j", "-4", "addr", "show"])
    interface = mesh_interface(plan, json.loads(shown or "[]"))
    nat = ["iptables", "-w", "-t", "nat"]
    if not _succeeds([*nat, "-L", NAT_CHAIN, "-n"]):
        _run([*nat, "-N", NAT_CHAIN])
    jump = ["PREROUTING", "-j", NAT_CHAIN]
    if not _succeeds([*nat, "-C", *jump]):
        _run([*nat, "-A", *jump])
    for cmd in network_commands(plan, interface, intercept_port):
        _run(cmd)
    vips = ", ".join(f"{u.service}={u.vip}" for u in plan.upstreams)
    log.info("owning %d virtual IPs on %s: %s", len(plan.upstreams), interface, vips)
    return interface


def _succeeds(cmd: Command) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False  # the next _run says what is missing


def _run(cmd: Command) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeStartError(
            f"'{cmd[0]}' is not installed in the mesh container",
            hint="the mesh image needs iproute2 and iptables (compose-templates/Dockerfile)",
        ) from None
    if done.returncode != 0:
        err = done.stderr.strip()
        denied = "not permitted" in err or "Permission denied" in err
        raise RuntimeStartError(
            f"{' '.join(cmd)} failed: {err}",
            hint="the localmesh service needs cap_add: [NET_ADMIN]"
            if denied
            else "see the mesh container's log",
        )
    return done.stdout


# --- discovery -------------------------------------------------------------------------


def discovery_names(plan: MeshPlan) -> dict[str, str]:
    """Service -> the DNS name that lists its replicas' addresses on the mesh network."""
    services = {u.service for u in plan.upstreams} | {c.service for c in plan.clients}
    return {s: f"{s}.{plan.network.name}" for s in sorted(services)}


def discovered_from(plan: MeshPlan, answers: Mapping[str, Iterable[str]]) -> Discovered:
    """Turn ``service -> replica IPs`` into the control plane's endpoints and sources.

    An upstream gets one endpoint per replica and known port, and one whose other ports
    are intercepted (``unknown_ports``) also port 0 per replica: "the port the client
    dialled", which the data plane's cluster for that port fills in.
    """
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for u in plan.upstreams:
        ips = sorted(set(answers.get(u.service, ())), key=ipaddress.IPv4Address)
        ports = [p.port for p in u.ports]
        if u.unknown_ports or not ports:
            ports.append(0)
        endpoints[u.service] = tuple(Endpoint(ip, port) for port in ports for ip in ips)
    sources = {ip: svc for svc, ips in sorted(answers.items()) for ip in ips}
    return Discovered(endpoints=endpoints, sources=sources)


async def resolve_all(name: str) -> tuple[str, ...]:
    """Every IPv4 address Docker's DNS gives ``name``; () when none runs (no such name);
    ``socket.gaierror`` when the lookup itself fails (timeout, no DNS server)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return ()
        raise
    return tuple(sorted({str(info[4][0]) for info in infos}, key=ipaddress.IPv4Address))


@dataclass(frozen=True, slots=True)
class LookupFailure:
    """Why a service's lookup fails, and since when (epoch seconds, first failure in a row)."""

    message: str
    since: float

    def as_dict(self) -> dict[str, object]:
        return {"message": self.message, "since": self.since}


class DnsDiscovery:
    """Re-resolves every meshed service periodically and on demand; publishes on change.

    A name that fails to resolve (timeout, not "no such name") keeps its last answer, so a
    DNS hiccup never empties a cluster; "no such name" means no replica runs: empty. A
    failing service is in ``failures`` (``/status`` shows it) until a lookup answers again.
    """

    def __init__(
        self,
        plan: MeshPlan,
        *,
        interval: float = 2.0,
        min_interval: float = 0.25,
        resolve: Resolve = resolve_all,
    ) -> None:
        self.plan = plan
        self.interval = interval
        self.min_interval = min_interval
        self._resolve = resolve
        self._names = discovery_names(plan)
        self._answers: dict[str, tuple[str, ...]] = {}
        self._wake = asyncio.Event()
        self.current: Discovered | None = None
        self.failures: dict[str, LookupFailure] = {}

    def trigger(self, service: str | None = None) -> None:
        """Ask for a fresh lookup now (an upstream of ``service`` failed, a caller's IP is
        unknown); lookups stay ``min_interval`` apart."""
        if not self._wake.is_set():
            log.debug("re-resolving now: %s", f"{service} failed" if service else "asked")
        self._wake.set()

    async def resolve_once(self) -> Discovered:
        names = list(self._names.items())
        results = await asyncio.gather(
            *(self._resolve(dns) for _, dns in names), return_exceptions=True
        )
        for (service, dns), ips in zip(names, results, strict=True):
            if isinstance(ips, OSError):
                self._failed(service, f"looking up {dns} failed: {ips.strerror or ips}")
            elif isinstance(ips, BaseException):
                raise ips
            else:
                self._answers[service] = ips
                if self.failures.pop(service, None) is not None:
                    log.info("looking up %s works again", dns)
        return discovered_from(self.plan, self._answers)

    def _failed(self, service: str, message: str) -> None:
        """Keep the last answer; log a failure when it starts or changes, not every poll."""
        known = self.failures.get(service)
        if known is None or known.message != message:
            log.warning("%s; keeping the endpoints known before", message)
        since = known.since if known is not None else time.time()
        self.failures[service] = LookupFailure(message, since)

    async def run(self, publish: Callable[[Discovered], Awaitable[object]]) -> None:
        """Resolve, publish what changed, wait for the interval or a trigger; cancel to stop."""
        while True:
            started = time.monotonic()
            self._wake.clear()  # a trigger arriving during this lookup asks for another
            found = await self.resolve_once()
            if found != self.current:
                self.current = found
                await publish(found)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            await asyncio.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))
