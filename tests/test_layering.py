"""The packages depend one way: no import circle among the modules of kd_gym and agents (imports inside functions
count too), kd_gym never imports agents, and no agent or script reaches into the env's trainer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kd_gym", "agents")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> nx.DiGraph:
    """module -> every kd_gym / agents module it imports, at the top or inside a function."""
    modules, graph = _modules(), nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph.add_edges_from((name, target) for target in targets if target in modules and target != name)
    return graph


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert graph.has_edge("agents.experiments.common", "agents.experiments.run")  # a lazy import in run_one
    assert graph.has_edge("agents.experiments.bench", "agents.experiments.cells")


def test_no_import_circle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == [], f"import circles: {cycles}; move what both sides need into a module below them"


def test_kd_gym_does_not_import_agents():
    graph = import_graph()
    wrong = [(a, b) for a, b in graph.edges if a.startswith("kd_gym") and b.startswith("agents")]
    assert wrong == []


@pytest.mark.parametrize("folder", ["agents", "scripts"])
def test_no_reach_into_the_env_trainer(folder):
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / folder).rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"unwrapped\.trainer\b|\.unwrapped\._\w", line)]
    assert hits == [], f"env internals read at {hits}; use the documented attributes (docs/env.md)"


def test_policies_do_not_import_the_harness():
    graph = import_graph()
    wrong = [(a, b) for a, b in graph.edges
             if a.startswith("agents") and not a.startswith("agents.experiments") and b.startswith("agents.experiments")]
    assert wrong == [], f"policies import the experiment harness: {wrong}"
