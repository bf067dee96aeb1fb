"""The import rules of docs/architecture.md: the core (``common``) never imports its callers
(``gateway``, ``services``), checked over every module's import statements; the API processes
(each app ``trainyard serve`` runs) never import the training stack, checked by importing each app
in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from common.components import components
from tests.utils.server import REPO

CALLERS = ("gateway", "services")
HEAVY = ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes", "accelerate", "datasets")


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of what a module's import statements name (relative imports resolved)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def test_the_core_imports_none_of_its_callers() -> None:
    files = sorted((REPO / "common").rglob("*.py"))
    assert len(files) > 20, "the core's modules were not found"
    offenders = []
    for path in files:
        rel = path.relative_to(REPO).with_suffix("")
        package = ".".join(rel.parts if path.name == "__init__.py" else rel.parts[:-1])
        for name in imported_modules(ast.parse(path.read_text(), str(path)), package):
            if name.split(".")[0] in CALLERS:
                offenders.append(f"{rel}: {name}")
    assert not offenders, offenders


def test_the_rule_sees_relative_and_nested_imports() -> None:
    tree = ast.parse("def f():\n    from gateway import db\nfrom ..services import x\nimport gateway.app as g\n")
    found = imported_modules(tree, "common.train")
    assert {"gateway", "gateway.db", "common.services", "gateway.app"} <= found


@pytest.mark.parametrize("component", sorted(components()))
def test_api_processes_never_import_the_training_stack(component: str) -> None:
    app = components()[component].app
    code = (
        "import json, sys\n"
        "from uvicorn.importer import import_from_string\n"
        f"assert callable(import_from_string({app!r}))\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{app} imports the training stack"
