"""The layering rules of docs/layout.md, checked on the source: each package imports only the layers below
it, domain errors carry no grpc, and only the API edge, the log's record codec and the composition root
touch the generated code."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SERVER = ROOT / "server"
#: package -> the ``server.*`` prefixes its modules may import (besides their own package)
ALLOWED = {
    "domain": (),
    # logs, childproc: the trainer process (server.models.remote) is a child process like the online writer
    "models": ("server.domain", "server.logs", "server.childproc"),
    "log": ("server.domain", "server.logs"),
    "store": ("server.domain", "server.log.atomic", "server.config", "server.logs", "server.childproc"),
    "worker": ("server.domain", "server.models", "server.log", "server.store", "server.metrics", "server.logs",
               "server.fdlimit", "server.config"),
    # the explorer is an edge like api/: it reads the worker (through ProfileCore) and the models, and takes
    # the API keys' checks and the segment report from where they live
    # workers across processes (Ray actors, the front end's routing, the shared trainer, what runners report):
    # above the worker, below the API edge; no transport
    "cluster": ("server.domain", "server.models", "server.worker", "server.store", "server.log", "server.metrics",
                "server.config"),
    "ui": ("server.domain", "server.models", "server.worker", "server.metrics", "server.config",
           "server.api.security", "server.tools.segments"),
}
GENERATED_OK = {"server/log/codec.py", "server/app.py", "server/cli.py"}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _modules(package: str) -> list[Path]:
    return sorted((SERVER / package).rglob("*.py"))


def test_each_layer_imports_only_the_layers_below_it() -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        own = f"server.{package}"
        for path in _modules(package):
            for name in _imports(path):
                if name.startswith("server._gen"):
                    continue  # the generated code has its own rule (below)
                if name.startswith("server.") and not name.startswith((own, *allowed)):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad
    assert _modules("domain") and _modules("worker")  # the check saw the packages


def test_domain_carries_no_transport_and_only_the_edge_touches_generated_code() -> None:
    for path in _modules("domain"):
        assert not {n for n in _imports(path) if n == "grpc" or n.startswith("grpc.")}, path
    touching = {str(p.relative_to(ROOT)) for p in SERVER.rglob("*.py") if "_gen" not in p.parts
                and any(n.startswith("server._gen") for n in _imports(p))}
    outside = {p for p in touching if not p.startswith("server/api/") and p not in GENERATED_OK}
    assert not outside, outside
    assert "server/log/codec.py" in touching and any(p.startswith("server/api/") for p in touching)
