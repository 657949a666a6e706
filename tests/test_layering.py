"""The package's import order (README, module map): a module imports only from its own
package or from a layer below it, so recorders never pull in the request flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "service" / "tunegate"

# Top to bottom; a module may import its own layer or any layer after it.
LAYERS = (
    "commands",
    "app",
    "api",
    "observability",
    "experiments",
    "flow",
    "state",
    "records",
    "spans",
    "auth",
    "config",
    "quality",
    "simulator",
    "pricing",
    "errors",
)
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    """`tunegate.flow.gateway` → `flow`; the package root (`__version__`) is the floor."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "errors"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every `tunegate` module a file imports, wherever the import statement stands."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tunegate":
                found += [(node.lineno, f"tunegate.{alias.name}") for alias in node.names]
            elif node.module.startswith("tunegate."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("tunegate.")]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        own = layer_of(".".join(relative.parts))
        if own not in RANK:
            wrong.append(f"{relative}: not in any layer")
            continue
        for line, module in imports_of(path):
            target = layer_of(module)
            if target not in RANK or RANK[target] < RANK[own]:
                wrong.append(f"{relative}:{line} ({own}) imports {module} ({target})")
    return wrong


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "limits.py"
    module.write_text("from tunegate.flow.gateway import Outcome\n")
    assert imports_of(module) == [(1, "tunegate.flow.gateway")]
    assert RANK[layer_of("tunegate.flow.gateway")] < RANK[layer_of("tunegate.state.limits")]


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_every_layer_exists(module: str) -> None:
    assert (PACKAGE / module).is_dir() or (PACKAGE / f"{module}.py").exists()
