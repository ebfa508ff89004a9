"""Compile the data plane's hot path to C with mypyc; everything else stays pure Python.

Why: the per-request work of the HTTP engine (parse callbacks, routing, the exchange,
pooled upstream connections, metrics, access log) is interpreter-bound. mypyc turns the
same type-annotated modules into a C extension and halves their CPU per request
(docs/performance.md), with no second implementation to keep in step: the .py files are
the source, and they still run as they are where no compiler is at hand.

``LOCALMESH_PURE=1`` skips compilation (a pure-Python install, e.g. to debug with pdb).
Metadata lives in pyproject.toml; this file only adds the extension modules.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

#: The modules a request runs through. Keep this list short: compiled modules check types
#: at runtime and cannot be monkeypatched, which only pays off on the hot path.
HOT_PATH = [
    "localmesh/runtime/dataplane/batching.py",
    "localmesh/runtime/dataplane/http.py",
    "localmesh/runtime/dataplane/upstream.py",
    "localmesh/runtime/dataplane/tcp.py",
    "localmesh/runtime/dataplane/context.py",
    "localmesh/runtime/dataplane/compiled.py",
    *sorted(
        str(p)
        for p in Path("localmesh/runtime/dataplane/core").glob("*.py")
        if p.name != "__init__.py"
    ),
    "localmesh/runtime/telemetry/accesslog.py",
    "localmesh/runtime/telemetry/metrics.py",
    "localmesh/runtime/ingress/tlsstream.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("LOCALMESH_PURE"):
        return []
    from mypyc.build import mypycify

    # Type checking proper is `make check` (strict, with every dependency installed); the
    # build environment has none of them, so it compiles with their types unknown.
    extensions = mypycify(
        ["--config-file=", "--ignore-missing-imports", *HOT_PATH],
        opt_level="3",
        group_name="localmesh._speedups",
    )
    for ext in extensions:
        ext.optional = True  # no C compiler (a bare Mac, a slim image): install the sources
    return list(extensions)


setup(ext_modules=ext_modules())
