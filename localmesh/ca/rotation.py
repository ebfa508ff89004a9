"""Certificates that renew themselves while serving: workload identities and ingress certs.

A ``RotatingCert`` owns one leaf and every ``ssl.SSLContext`` that presents it. At 2/3 of
the leaf's life (what SPIRE and cert-manager do: the remaining third is slack for a rotator
that is stuck or a laptop that slept) it issues a new one and loads it into those contexts.
OpenSSL copies the certificate into each connection when its handshake starts, so
connections already up keep theirs and only new handshakes present the new one: nothing is
dropped. A ``Rotator`` drives any number of them from one task.

The schedule itself (``rotation_due``/``next_wakeup``) is pure and tested with plain values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from localmesh.ca import files
from localmesh.ca.authority import WORKLOAD_LIFETIME, IssuedCert
from localmesh.ca.names import workload_spiffe_id
from localmesh.errors import CAError

log = logging.getLogger(__name__)

ROTATE_AT = 2 / 3
#: Wake at least this often and re-read the wall clock: a monotonic sleep does not count time
#: a suspended laptop spent asleep, the certificate's clock does.
MAX_SLEEP = 60.0
#: After a failed issue, retry this soon (sooner when less time is left: a tenth of it). In
#: the mesh container a failure means the host has not renewed the ingress certificate yet,
#: which can take days for a detached project, and each retry logs an error: every five
#: minutes is soon enough for a certificate with days left, and a line a minute was noise.
RETRY_AFTER = 300.0


def rotation_due(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """The instant a certificate should be replaced: 2/3 into its validity."""
    return not_before + (not_after - not_before) * ROTATE_AT


def next_wakeup(dues: Iterable[dt.datetime], now: dt.datetime) -> float:
    """Seconds to sleep before the earliest rotation, capped so the wall clock is re-read."""
    earliest = min(dues, default=None)
    if earliest is None:
        return MAX_SLEEP
    return max(0.0, min(MAX_SLEEP, (earliest - now).total_seconds()))


_SHM = Path("/dev/shm")


def load_into(ctx: ssl.SSLContext, issued: IssuedCert) -> None:
    """Load a leaf and key into a context; Python's ssl only loads from files, so the key
    passes through a private (0700, RAM-backed where possible) directory for an instant."""
    where = str(_SHM) if _SHM.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="localmesh-", dir=where) as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        issued.write(cert, key)
        ctx.load_cert_chain(cert, key)


class RotatingCert:
    """One certificate, re-issued by ``issue`` at 2/3 of its life, and the contexts using it."""

    def __init__(
        self,
        name: str,
        issue: Callable[[], IssuedCert],
        on_rotate: Callable[[IssuedCert], None] | None = None,
    ) -> None:
        self.name = name
        self._issue = issue
        self._on_rotate: list[Callable[[IssuedCert], None]] = []
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self.current = issue()
        self.rotations = 0
        if on_rotate is not None:
            self.subscribe(on_rotate)

    @property
    def due(self) -> dt.datetime:
        return rotation_due(self.current.not_before, self.current.not_after)

    def attach(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        """Present this certificate on ``ctx`` from now on (through every rotation)."""
        load_into(ctx, self.current)
        self._contexts.add(ctx)
        return ctx

    def subscribe(self, callback: Callable[[IssuedCert], None]) -> None:
        """Call ``callback`` with the current cert now and with every new one (e.g. to write
        files containers read)."""
        callback(self.current)
        self._on_rotate.append(callback)

    def rotate(self) -> IssuedCert:
        """Issue a new certificate and swap it into every attached context.

        Getting the certificate already held is a failure to retry later, not a rotation:
        in the mesh container ``issue`` reads what the host wrote, which may not be renewed
        yet, and "rotating" to it would leave it due, to be rotated again at once, in a loop.
        """
        new = self._issue()
        if new.serial == self.current.serial:
            raise CAError(f"the certificate for {self.name} is not renewed yet")
        for ctx in list(self._contexts):
            load_into(ctx, new)
        self.current = new
        self.rotations += 1
        for callback in self._on_rotate:
            callback(new)
        log.info(
            "rotated certificate %s: serial %x valid until %s",
            self.name,
            new.serial,
            new.not_after.isoformat(),
        )
        return new


class WorkloadIssuer(Protocol):
    """Where workload identities come from: the CA on the host, the mesh signer in the mesh
    container (``ca.containers.MountedCertificates``)."""

    def issue_workload(
        self,
        trust_domain: str,
        service: str,
        *,
        lifetime: float = WORKLOAD_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCert: ...


class WorkloadIdentity(RotatingCert):
    """A service's SPIFFE identity (``spiffe://<td>/svc/<service>``), 24 h by default."""

    def __init__(
        self,
        ca: WorkloadIssuer,
        trust_domain: str,
        service: str,
        lifetime: float = WORKLOAD_LIFETIME,
    ) -> None:
        self.spiffe_id = workload_spiffe_id(trust_domain, service)
        self.service = service
        super().__init__(
            self.spiffe_id,
            lambda: ca.issue_workload(trust_domain, service, lifetime=lifetime),
        )

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting this identity (peers verify the SPIFFE URI)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return self.attach(ctx)


class Rotator:
    """Drives the rotation of every registered certificate from a single task."""

    def __init__(self, now: Callable[[], dt.datetime] | None = None) -> None:
        self._certs: list[RotatingCert] = []
        self._retry_at: dict[int, dt.datetime] = {}
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._changed = asyncio.Event()

    def add(self, cert: RotatingCert) -> RotatingCert:
        self._certs.append(cert)
        self._changed.set()
        return cert

    def remove(self, cert: RotatingCert) -> None:
        self._certs = [c for c in self._certs if c is not cert]
        self._retry_at.pop(id(cert), None)

    def _due(self, cert: RotatingCert) -> dt.datetime:
        return self._retry_at.get(id(cert), cert.due)

    def rotate_due(self) -> list[RotatingCert]:
        """Rotate every certificate whose time has come; a failure is retried shortly."""
        now = self._now()
        done = []
        for cert in list(self._certs):
            if self._due(cert) > now:
                continue
            try:
                cert.rotate()
            except (CAError, OSError, ssl.SSLError) as exc:
                left = (cert.current.not_after - now).total_seconds()
                retry = max(1.0, min(RETRY_AFTER, left / 10))
                self._retry_at[id(cert)] = now + dt.timedelta(seconds=retry)
                log.error("rotating %s failed (%s); retrying in %.0fs", cert.name, exc, retry)
                continue
            self._retry_at.pop(id(cert), None)
            done.append(cert)
        return done

    async def run(self) -> None:
        """Rotate forever; cancel the task to stop."""
        while True:
            self.rotate_due()
            delay = next_wakeup((self._due(c) for c in self._certs), self._now())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=delay)


def write_identity_files(directory: Path) -> Callable[[IssuedCert], None]:
    """A ``subscribe`` callback keeping ``directory/{cert.pem,key.pem}`` current.

    Each file is replaced by rename, so a reader never sees a partial file; mount the
    *directory* into containers (a bind-mounted single file would keep the old inode).
    """

    def write(issued: IssuedCert) -> None:
        files.ensure_private_dir(directory)
        issued.write(directory / "cert.pem", directory / "key.pem")

    return write


class WorkloadIdentities:
    """Every service's identity, created on first use and rotated by one ``Rotator``."""

    def __init__(
        self,
        ca: WorkloadIssuer,
        trust_domain: str,
        rotator: Rotator,
        lifetime: float = WORKLOAD_LIFETIME,
    ) -> None:
        self._ca = ca
        self._trust_domain = trust_domain
        self._rotator = rotator
        self._lifetime = lifetime
        self._by_service: dict[str, WorkloadIdentity] = {}

    def get(self, service: str) -> WorkloadIdentity:
        identity = self._by_service.get(service)
        if identity is None:
            identity = WorkloadIdentity(self._ca, self._trust_domain, service, self._lifetime)
            self._rotator.add(identity)
            self._by_service[service] = identity
        return identity
