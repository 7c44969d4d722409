"""Imports point down only (DESIGN.md, "Layers"): pipelines/ > generative/ > rl/, rlhf/ > cluster/."""

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


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for lineno, top in _imports(path):
            if top in OURS and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {top}")
    assert not bad, "imports that point up: " + "; ".join(bad)
