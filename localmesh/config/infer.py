"""Zero-config: the mesh a compose project implies when there is no mesh.yaml.

Every service is meshed with the ports and protocols ``config.ports.learn`` finds, the
same knowledge ``generate`` plans with, so ``localmesh init``'s mesh.yaml and the plan
agree port for port. Services the mesh cannot carry (a ``network_mode``, UDP ports) are
written as ``meshed: false`` with the reason. A mesh.yaml overrides any of this per
service and per port.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from localmesh.compose.project import ComposeProject
from localmesh.config.model import MeshConfig, MeshSettings, PortSpec, Service
from localmesh.config.ports import Exclusion, ImagePorts, PortRange, learn

#: ``init``'s comment for a service the mesh leaves alone, by ``Exclusion.kind``.
_NOTES = {
    "network-mode": "it uses {reason}, which the mesh cannot intercept",
    "udp": "it uses {reason}, and the mesh carries TCP only",
    "mesh-config": "{reason}",
}


@dataclass(frozen=True, slots=True)
class InferredPort:
    """A port with where it was learned and why its protocol was chosen (``init`` writes
    both as a comment)."""

    spec: PortSpec
    sources: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class InferredService:
    service: Service
    ports: tuple[InferredPort, ...]
    note: str | None = None  # why it is unmeshed, for the comment in init's output
    wide_ranges: tuple[PortRange, ...] = ()  # left to the catch-all intercept

    @property
    def unknown_ports(self) -> bool:
        """Calls on unlisted ports still reach it, through the catch-all intercept."""
        return self.service.meshed and (not self.ports or bool(self.wide_ranges))


def _note(exclusion: Exclusion) -> str:
    return _NOTES[exclusion.kind].format(reason=exclusion.reason)


def infer_services(
    project: ComposeProject,
    image_ports: ImagePorts | None = None,
    *,
    unmeshed: Collection[str] = (),
) -> dict[str, InferredService]:
    """Every compose service as the mesh sees it with no mesh.yaml (``unmeshed``: those a
    mesh.yaml leaves out, which then own none of the names others use)."""
    learned = learn(project.name, project.services(), image_ports, unmeshed=unmeshed)
    out: dict[str, InferredService] = {}
    for name in sorted(project.services()):
        exclusion = learned.unmeshed.get(name)
        if exclusion is not None:
            out[name] = InferredService(Service(name=name, meshed=False), (), _note(exclusion))
            continue
        found = learned.ports[name]
        ports: list[InferredPort] = []
        for port, sources in sorted(found.tcp.items()):
            protocol, reason = found.protocol(port)
            ports.append(InferredPort(PortSpec(port, protocol), tuple(sorted(sources)), reason))
        service = Service(name=name, ports=tuple(p.spec for p in ports))
        out[name] = InferredService(service, tuple(ports), wide_ranges=tuple(found.wide_ranges))
    return out


def infer_mesh(project: ComposeProject, image_ports: ImagePorts | None = None) -> MeshConfig:
    """The mesh a compose project implies: every service it can carry meshed, protocols
    guessed. ``image_ports``: local images' EXPOSE lists, when an engine was asked."""
    services = tuple(s.service for s in infer_services(project, image_ports).values())
    return MeshConfig(
        mesh=MeshSettings(name=project.name or MeshSettings().name),
        services=services,
        source=f"<inferred from {', '.join(str(f) for f in project.files) or project.name}>",
    )
