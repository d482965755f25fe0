"""The packages import one way (docs/architecture.md): every ``import`` of every module, read
from its source (type-only imports too), goes down the layers, never up; nothing under
processes/ or model/ imports server/, and model/ imports nothing of the server's rooms."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.support.server import REPO

FOLDERS = {"model": "model", "processes": "processes", "server": "server"}
NEUTRAL = "processes"  # the modules directly under processes/: settings, errors, types, ...
# each layer and what it may import (besides itself); model may import nothing of these
ALLOWED = {
    "processes": set(),
    "processes.storage": {"processes"},
    "processes.pipeline": {"processes", "processes.storage", "model"},
    "processes.publishing": {"processes", "processes.storage"},
    "processes.monitoring": {"processes", "processes.storage", "processes.pipeline",
                             "processes.publishing"},
    "processes.ogc": {"processes", "processes.storage", "processes.pipeline",
                      "processes.publishing", "processes.monitoring"},
    "processes.jobs": {"processes", "processes.storage", "processes.pipeline",
                       "processes.publishing", "processes.ogc"},
    "server": {"processes", "processes.storage", "processes.pipeline", "processes.publishing",
               "processes.monitoring", "processes.ogc", "processes.jobs", "model"},
    "model": set(),
}


def layer_of(module: str) -> str | None:
    """``aquamask.processes.jobs.manager`` -> ``processes.jobs``; None outside the rooms."""
    parts = module.split(".")
    if parts[0] != "aquamask" or len(parts) < 2 or parts[1] not in FOLDERS:
        return None
    if parts[1] == "processes" and len(parts) > 3 and (
            REPO / "processes" / parts[2] / "__init__.py").is_file():
        return f"processes.{parts[2]}"
    return parts[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    """Layer -> the layers its modules import."""
    graph: dict[str, set[str]] = defaultdict(set)
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            module = ".".join(("aquamask", *path.relative_to(REPO).with_suffix("").parts))
            source = layer_of(module.removesuffix(".__init__") + ".x")
            for name in imports(path):
                target = layer_of(name)
                if source and target and target != source:
                    graph[source].add(target)
    return graph


def test_imports_go_down_the_layers_only():
    wrong = {source: sorted(targets - ALLOWED[source])
             for source, targets in package_graph().items() if targets - ALLOWED[source]}
    assert not wrong, f"imports against the layers: {wrong}"


def test_nothing_below_the_server_imports_it():
    graph = package_graph()
    assert not [source for source, targets in graph.items()
                if "server" in targets and source != "server"]
    assert not graph.get("model")
