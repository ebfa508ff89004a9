"""Addresses of the mesh network: which subnet, how it is laid out, which VIP each upstream gets.

All pure: the taken subnets come in as values (the caller asks Docker), so the same inputs
always give the same addresses, which is what keeps reruns byte-identical.

Layout of a mesh subnet (a /22 by default, e.g. ``10.213.8.0/22``)::

    10.213.8.1            gateway (the bridge)
    10.213.8.2            the mesh container
    10.213.9.0/24         VIPs, one /32 per upstream (.1-.254)
    10.213.10.0/23        ip_range: where Docker places every other container

A VIP is chosen by hashing the service name into the VIP range (probing on collision, in
name order), so adding or removing one service leaves the others' VIPs alone and compose
does not recreate every client.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from localmesh.errors import ConfigError, Problem

Net = ipaddress.IPv4Network

#: Candidates for the mesh subnet: 64 /22s in 10.213.0.0/16, a block Docker's default
#: address pools (172.17-31.0.0/16, 192.168.0.0/16) never use. Each project starts at its
#: own offset (a hash of its name) so two meshed projects rarely even need to probe.
CANDIDATE_BLOCK = ipaddress.IPv4Network("10.213.0.0/16")
CANDIDATE_PREFIX = 22
#: A mesh subnet needs a /24 for VIPs and a half for containers: /22 is the smallest.
MAX_PREFIX = 22
MIN_PREFIX = 16
VIP_SLOTS = 254  # .1-.254 of the VIP /24: no .0/.255, which some clients refuse to dial


@dataclass(frozen=True, slots=True)
class Layout:
    subnet: Net
    gateway: ipaddress.IPv4Address
    mesh_ip: ipaddress.IPv4Address
    vip_range: Net
    ip_range: Net


def layout(subnet: Net) -> Layout:
    """Split a mesh subnet as the module docstring draws it."""
    if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
        raise ConfigError(
            Problem(f"mesh subnet {subnet} must be between /{MIN_PREFIX} and /{MAX_PREFIX}"),
            hint="it holds a /24 of VIPs and a range for the containers, e.g. 10.213.8.0/22",
        )
    base = subnet.network_address
    return Layout(
        subnet=subnet,
        gateway=base + 1,
        mesh_ip=base + 2,
        vip_range=ipaddress.IPv4Network(f"{base + 256}/24"),
        ip_range=ipaddress.IPv4Network(
            f"{base + subnet.num_addresses // 2}/{subnet.prefixlen + 1}"
        ),
    )


def parse_subnet(text: str) -> Net:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(
            Problem(f"--subnet {text!r} is not a network: {exc}"),
            hint="give an IPv4 network such as 10.213.8.0/22",
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(Problem(f"--subnet {text} is IPv6"), hint="the mesh network is IPv4")
    return net


def candidates(project: str) -> list[Net]:
    """The deterministic candidate list for ``project``, in the order they are tried."""
    all_ = list(CANDIDATE_BLOCK.subnets(new_prefix=CANDIDATE_PREFIX))
    start = int.from_bytes(hashlib.sha256(project.encode()).digest()[:4], "big") % len(all_)
    return all_[start:] + all_[:start]


def choose_subnet(
    project: str,
    taken: Iterable[Net],
    *,
    requested: Net | None = None,
    previous: Net | None = None,
) -> Net:
    """The mesh subnet: ``requested`` if free, else ``previous`` (the project's existing
    mesh network) if still free, else the first free candidate."""
    taken = [t for t in taken if isinstance(t, ipaddress.IPv4Network)]

    def free(net: Net) -> bool:
        return not any(net.overlaps(t) for t in taken)

    if requested is not None:
        layout(requested)
        clash = next((t for t in taken if requested.overlaps(t)), None)
        if clash is not None:
            raise ConfigError(
                Problem(f"--subnet {requested} overlaps the existing network {clash}"),
                hint="choose another --subnet, or leave it out to let localmesh pick one",
            )
        return requested
    if previous is not None and previous.prefixlen <= MAX_PREFIX and free(previous):
        return previous
    for net in candidates(project):
        if free(net):
            return net
    raise ConfigError(
        Problem(f"every candidate mesh subnet in {CANDIDATE_BLOCK} overlaps an existing network"),
        hint="pass --subnet with a free IPv4 /22 (docker network ls shows what is taken)",
    )


def assign_vips(services: Sequence[str], vip_range: Net) -> dict[str, str]:
    """One VIP per service: hash of the name, linear probing in name order on collision."""
    if len(services) > VIP_SLOTS:
        raise ConfigError(
            Problem(f"{len(services)} services to mesh; one mesh holds at most {VIP_SLOTS}"),
            hint="exclude some with `meshed: false` in mesh.yaml",
        )
    base = vip_range.network_address
    used: set[int] = set()
    out: dict[str, str] = {}
    for name in sorted(services):
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % VIP_SLOTS
        while slot in used:
            slot = (slot + 1) % VIP_SLOTS
        used.add(slot)
        out[name] = str(base + 1 + slot)
    return out
