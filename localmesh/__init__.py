"""localmesh: a service mesh for docker-compose projects.

The data path, as the package tree draws it::

    edge client ─▶ runtime/ingress (TLS, mTLS) ─┐
    client container ─▶ runtime/dataplane listener ─▶ route ─▶ policy ─▶ cluster
                        ─▶ endpoint ─▶ upstream (app, Postgres, Redis)
    config/ (mesh.yaml) + compose/ ─▶ runtime/controlplane: compile ─▶ Snapshot ─▶ dataplane

``config`` reads and validates mesh.yaml, ``compose`` normalises and rewrites the
user's compose project, ``ca`` issues certificates, ``runtime`` is the one
process that serves traffic, ``cli`` is the ``localmesh`` command.
"""

__version__ = "0.1.0"
