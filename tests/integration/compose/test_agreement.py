"""``localmesh init`` and ``localmesh generate`` tell the same story about every golden project.

For each successful golden case, the mesh.yaml ``init`` writes (parsed back as ``validate``
reads it) and the plan ``generate`` makes name the same ports with the same protocols for
every upstream; a service ``init`` leaves unknown-ported (no ports, or a range too wide to
list) is exactly one the plan serves through the catch-all intercept, and a service
``init`` writes as ``meshed: false`` is exactly one the plan leaves alone. With a mesh.yaml
in the case, the plan follows the loaded config instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.compose.addresses import parse_subnet
from localmesh.compose.planner import make_plan
from localmesh.compose.project import load_project
from localmesh.config import infer_mesh, load_mesh_file, parse_mesh_text, render_inferred
from localmesh.config.infer import infer_services
from localmesh.config.model import MeshConfig
from tests.integration.compose.golden import Case, all_cases, prepare

CASES = [
    c for c in all_cases() if not (c.expected / "error.txt").exists() and not c.spec.get("error")
]


def _ports(config: MeshConfig, name: str) -> list[tuple[int, str]]:
    svc = config.service(name)
    assert svc is not None, name
    return [(p.port, p.protocol.value) for p in svc.ports]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_init_and_generate_agree(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = prepare(case, tmp_path, monkeypatch)
    options = case.options(work)
    project = load_project(
        options.files, options.env_files, options.project_name, options.profiles, work
    )
    facts = case.facts()
    init_text = render_inferred(project, facts.image_ports)
    written = parse_mesh_text(init_text, "mesh.yaml", project, facts.image_ports)
    assert written.services == infer_mesh(project, facts.image_ports).services

    if options.mesh_file is not None:
        config = load_mesh_file(work / options.mesh_file, project, facts.image_ports)
    else:
        config = written
    subnet = parse_subnet(options.subnet) if options.subnet else None
    plan = make_plan(project, config, facts, subnet=subnet).plan
    inferred = infer_services(project, facts.image_ports)

    unmeshed = {u.service for u in plan.unmeshed}
    assert unmeshed == {s.name for s in config.services if not s.meshed}
    for upstream in plan.upstreams:
        assert [(p.port, p.protocol.value) for p in upstream.ports] == _ports(
            config, upstream.service
        ), upstream.service
        if options.mesh_file is None:
            assert upstream.unknown_ports == inferred[upstream.service].unknown_ports
    if options.mesh_file is None:
        assert unmeshed == {n for n, s in inferred.items() if not s.service.meshed}
        assert {u.service for u in plan.upstreams} == {
            n for n, s in inferred.items() if s.service.meshed
        }


def test_the_cases_cover_what_used_to_disagree() -> None:
    """Wide expose ranges, UDP, image EXPOSE, references, namespace sharers, healthchecks."""
    names = {c.name for c in CASES}
    assert {
        "unknown_ports",
        "udp",
        "image_expose",
        "env_urls",
        "host_port_pairs",
        "network_mode",
        "healthcheck_depends",
        "tls_clients",
    } <= names
