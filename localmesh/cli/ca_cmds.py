"""Commands: ca init, show, issue-client, trust, untrust."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from localmesh.ca import files
from localmesh.ca.authority import CLIENT_LIFETIME, DAY, CertificateAuthority
from localmesh.ca.names import client_spiffe_id
from localmesh.ca.truststore import DebianStore, TrustChange, TrustStores, anchor_file_name
from localmesh.cli.config_cmds import mesh_yaml_here
from localmesh.cli.output import console, print_json
from localmesh.config.model import Ingress, MeshSettings

app = typer.Typer(
    help="The local certificate authority (root + intermediate in $LOCALMESH_HOME/ca).\n\n"
    "Examples:\n\n  localmesh ca init\n\n"
    "  sudo -E localmesh ca trust        # browsers, curl, Python trust it\n\n"
    "  localmesh ca issue-client alice   # spiffe://localmesh/client/alice",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


@app.command("init")
def _init(json: JsonFlag = False) -> None:
    """Create the CA if there is none (idempotent); print where it lives."""
    ca, created = CertificateAuthority.init()
    info = ca.info()
    if json:
        print_json({"created": created, **info.as_dict()})
        return
    verb = "created" if created else "already exists:"
    _say(f"local CA {verb} {info.directory}")
    _say(f"root {info.root_subject}  sha256 {info.root_fingerprint}")
    _say("next: `localmesh ca trust` to make browsers and tools trust it")


@app.command("show")
def _show(json: JsonFlag = False) -> None:
    """Print the root and intermediate, name constraints, and whether the host trusts it."""
    ca = CertificateAuthority.load()
    info = ca.info()
    anchor = DebianStore().local_dir / anchor_file_name(info.root_fingerprint)
    data = {**info.as_dict(), "trusted_system_store": anchor.exists()}
    if json:
        print_json(data)
        return
    _say(f"directory     {info.directory}")
    _say(f"root          {info.root_subject}")
    _say(f"  sha256      {info.root_fingerprint}")
    _say(f"  expires     {info.root_not_after:%Y-%m-%d}")
    _say(f"intermediate  {info.intermediate_subject}")
    _say(f"  expires     {info.intermediate_not_after:%Y-%m-%d}")
    _say(f"permits DNS   {', '.join(info.permitted_dns)}")
    _say(f"permits IP    {', '.join(info.permitted_ip)}")
    _say(f"system store  {'trusted' if anchor.exists() else 'not trusted'}")


@app.command("issue-client")
def _issue_client(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Who it is for, e.g. alice or ci-runner.")
    ],
    trust_domain: Annotated[
        str | None,
        typer.Option(
            metavar="DOMAIN",
            help="The mesh's trust domain (default: mesh.trust_domain of ./mesh.yaml, "
            f"else {MeshSettings().trust_domain}).",
            show_default=False,
        ),
    ] = None,
    days: Annotated[float, typer.Option(metavar="DAYS", help="Lifetime in days.")] = CLIENT_LIFETIME
    / DAY,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Directory for NAME.pem, NAME-key.pem (default: $LOCALMESH_HOME/clients).",
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Issue a client certificate; ingress policies name it spiffe://<trust_domain>/client/NAME.

    Issuing NAME again replaces its files (a new key and certificate)."""
    here = mesh_yaml_here()
    mesh = _mapping(here.get("mesh"))
    trust_domain = trust_domain or str(mesh.get("trust_domain") or MeshSettings().trust_domain)
    spiffe = client_spiffe_id(trust_domain, name)
    ca = CertificateAuthority.load()
    directory = files.ensure_private_dir(out or files.localmesh_home() / "clients")
    issued = ca.issue_client(trust_domain, name, lifetime=days * DAY)
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    issued.write(cert, key)
    if json:
        print_json(
            {
                "identity": spiffe,
                "cert": str(cert),
                "key": str(key),
                "ca": str(ca.root_path),
                "not_after": issued.not_after.isoformat(),
            }
        )
        return
    _say(f"issued {spiffe} (valid until {issued.not_after:%Y-%m-%d})")
    _say(f"cert  {cert}\nkey   {key}")
    _say(f"try:  curl --cert {cert} --key {key} --cacert {ca.root_path} {_ingress_url(here)}")


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ingress_url(mesh: dict[str, Any]) -> str:
    """The first ingress host of ./mesh.yaml, else the example one."""
    ingress = _mapping(mesh.get("ingress"))
    hosts = ingress.get("hosts")
    host = _mapping(hosts[0]).get("host") if isinstance(hosts, list) and hosts else None
    port = ingress.get("https_port", Ingress().https_port)
    name = str(host).replace("*", "app") if host else "app.localhost"
    return f"https://{name}/" if port == 443 else f"https://{name}:{port}/"


def _report(changes: list[TrustChange], json: bool) -> None:
    if json:
        print_json([{"store": c.store, "action": c.action, "detail": c.detail} for c in changes])
        return
    for change in changes:
        _say(str(change))


@app.command("trust")
def _trust(json: JsonFlag = False) -> None:
    """Trust the root: Debian/Ubuntu system store, NSS when certutil exists, macOS command.

    Prints every file, database and command it changed.
    """
    ca, _ = CertificateAuthority.init()
    info = ca.info()
    _report(TrustStores().install(ca.root_pem, info.root_fingerprint, ca.root_path), json)


@app.command("untrust")
def _untrust(json: JsonFlag = False) -> None:
    """Remove every localmesh root that `trust` installed (works without the CA directory)."""
    _report(TrustStores().uninstall(files.ca_dir() / "root.pem"), json)
