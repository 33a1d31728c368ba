"""The core's import layering is acyclic, and each layer imports only the layers below it.

Layers, bottom to top: the flat model core (``anchorbind.errors``, ``config``, ``plugin``,
``registry``, …) < ``metrics`` < ``losses`` < ``data`` < ``evaluation`` < ``train`` < ``cli``.
Built-in plugins (``anchorbind.modalities``) and ``pipelines`` sit on top and are never imported
by the core. Imports inside functions count too: a lazy import still makes a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

CORE = REPO / "bind"
LAYER_ORDER = ["core", "metrics", "losses", "data", "evaluation", "train", "cli"]
ENTRY_MODULES = {"anchorbind.cli", "anchorbind.commands", "anchorbind.contract", "anchorbind.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["anchorbind", *parts])


def layer(module: str) -> str:
    if module in ENTRY_MODULES:
        return "cli"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYER_ORDER:
        return parts[1]
    if len(parts) > 1 and parts[1] in {"modalities", "pipelines", "configs"}:
        return parts[1]
    return "core"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "anchorbind" or m.startswith("anchorbind.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in CORE.rglob("*.py")}


def test_core_never_imports_built_in_plugins_or_pipelines():
    offenders = {m: sorted(i for i in deps if layer(i) in {"modalities", "pipelines"})
                 for m, deps in graph().items()}
    assert not {m: v for m, v in offenders.items() if v}, offenders


def test_each_layer_imports_only_layers_below_it():
    rank = {name: i for i, name in enumerate(LAYER_ORDER)}
    upward = []
    for module, deps in graph().items():
        here = layer(module)
        for dep in deps:
            there = layer(dep)
            if dep == "anchorbind" or there not in rank:
                continue
            if rank[there] > rank[here]:
                upward.append(f"{module} ({here}) imports {dep} ({there})")
    assert not upward, "\n".join(upward)


def test_module_graph_has_no_cycles():
    edges = defaultdict(set)
    g = graph()
    for module, deps in g.items():
        for dep in deps:
            # `from anchorbind.x import y` may name a submodule; either way it depends on x
            target = dep if dep in g else dep.rsplit(".", 1)[0]
            if target in g and target != module and target != "anchorbind":
                edges[module].add(target)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt):], nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(g):
        if state.get(start) is None and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)
