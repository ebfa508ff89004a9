"""The inferred mesh as a commented mesh.yaml, for ``localmesh init``.

Written by hand rather than dumped with pyyaml: the output is meant to be read and
edited, so every line says where a value came from, and commented examples show what
can be added. ``parse_mesh_text(render_inferred(p), ..., p)`` equals ``infer_mesh(p)``
(a test holds this), so ``init`` never writes a file that ``validate`` rejects.
"""

from __future__ import annotations

import json
import re

from localmesh.compose.project import ComposeProject
from localmesh.config.infer import infer_services
from localmesh.config.ports import ImagePorts

_PLAIN_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")


def _key(name: str) -> str:
    """A service name as a YAML key; quoted when it could read as something else."""
    return name if _PLAIN_KEY.match(name) else json.dumps(name)


def render_inferred(project: ComposeProject, image_ports: ImagePorts | None = None) -> str:
    inferred = infer_services(project, image_ports)
    names = list(inferred)
    http = [n for n, s in inferred.items() if any(p.spec.protocol.is_http for p in s.ports)]
    files = ", ".join(f.name for f in project.files) or "the compose project"
    out: list[str] = [
        f"# mesh.yaml for the compose project '{project.name}' ({files}), written by",
        "# `localmesh init`. Every service is meshed; ports and protocols were learned from",
        "# the compose files (each comment says from where, then why that protocol), the same",
        "# way `localmesh generate` plans. Edit freely, then `localmesh validate`/`analyze`.",
        "# Every field: docs/mesh-yaml.md. Durations: 500ms, 2s, 1m; percents: 5 or '5%'.",
        "",
        "mesh:",
        f"  name: {_key(project.name or 'localmesh')}",
        "  # peer_auth: strict        # only meshed workloads (mTLS) may call services",
        "",
    ]
    if not inferred:
        out.append("services: {}")
    else:
        out.append("services:")
    for name, inf in inferred.items():
        out.append(f"  {_key(name)}:")
        if not inf.service.meshed:
            out.append(f"    meshed: false   # {inf.note}")
            continue
        if inf.ports:
            out.append("    ports:")
            for p in inf.ports:
                out.append(
                    f"      - {{port: {p.spec.port}, protocol: {p.spec.protocol.value}}}"
                    f"   # from {', '.join(p.sources)}; protocol by {p.reason}"
                )
        else:
            out.append("    ports: []   # none known: calls on any port are still caught")
        for r in inf.wide_ranges:
            out.append(
                f"    # {r.field} {r.lo}-{r.hi}: too wide to list; calls there are still caught"
            )
    example = http[0] if http else (names[0] if names else "api")
    other = next((n for n in names if n != example), example)
    out += [
        "",
        "# Traffic rules for HTTP services (Istio VirtualService), for example:",
        f"#  {_key(example)}:",
        "#    routes:",
        "#      - name: slow-canary",
        "#        match: [{path: {prefix: /v2}}]",
        "#        timeout: 2s",
        "#        retries: {attempts: 3, per_try_timeout: 500ms, retry_on: [5xx, connect-failure]}",
        "#        fault: {delay: {fixed: 1s, percent: 10}}",
        "",
        "# Who may call whom (Istio AuthorizationPolicy), for example:",
        "# policies:",
        f"#   - {{name: only-{other}, action: allow, to: [{_key(example)}], "
        f"from: [{_key(other)}]}}",
        "",
        "# The HTTPS entry point, with certificates from the local CA, for example:",
        "# ingress:",
        "#   hosts:",
        f"#     - host: {_key(example)}.localhost",
        f"#       routes: [{{name: all, route: [{{service: {_key(example)}}}]}}]",
        "",
    ]
    return "\n".join(out)
