"""Imports point down only: pipelines/ > generative/ > rl/, rlhf/ > cluster/; every import is
visible to this checker (no module named in a string) and no module imports itself back."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

ALLOWED = {
    "cluster": {"cluster"},
    "rl": {"rl", "cluster"},
    "rlhf": {"rlhf", "cluster"},
    "generative": {"generative", "rl", "cluster"},
    "pipelines": {"pipelines", "generative", "rl", "rlhf", "cluster"},
}
OURS = set(ALLOWED)


def _module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path):
    """(line, imported module) for every import in the file, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from pipelines import rl_ac` imports the module pipelines.rl_ac
                yield node.lineno, f"{node.module}.{alias.name}"


def _our_files():
    return [p for package in sorted(ALLOWED) for p in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for lineno, name in _imports(path):
            top = name.split(".")[0]
            if top in OURS and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {top}")
    assert not bad, "imports that point up: " + "; ".join(bad)


def test_no_import_hidden_in_a_string():
    bad = []
    for path in _our_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("import_module", "__import__"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "imports by name string: " + "; ".join(bad)


def test_no_import_loop_between_modules():
    modules = {_module_name(p): p for p in _our_files()}
    graph = {m: sorted({n for _, n in _imports(p) if n in modules and n != m}) for m, p in modules.items()}
    loops, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                loops.append(" -> ".join([*stack[stack.index(n):], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not loops, "import loops: " + "; ".join(loops)
    # the checker sees the registry's arrows to every pipeline module
    assert {"pipelines.rl_dqn", "pipelines.rl_ac", "pipelines.gen_pipeline", "pipelines.rlhf_pipeline",
            "pipelines.toy"} <= set(graph["pipelines.registry"])
