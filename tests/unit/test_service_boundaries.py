"""Services meet through events and the shared library only: no module of one service imports
another service (``services/X`` importing ``services.Y``, X != Y), at any depth of either."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of each absolute import in ``tree``, conditional and local ones too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            if node.module == "services":  # ``from services import worker``
                yield from ((node.lineno, f"services.{a.name}") for a in node.names)


def crossings(root: Path) -> list[str]:
    """``path:line imports module`` for every import of another service under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).parts[0]
        for line, module in _imported(ast.parse(path.read_text(), filename=str(path))):
            parts = module.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] != own:
                found.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return found


def test_no_service_imports_another() -> None:
    assert crossings(SERVICES) == []


def test_the_scan_sees_each_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.py").write_text(
        "import services.b.x\n"
        "from services.c import y\n"
        "from services import d\n"
        "from services.a import own\n"
        "from . import sibling\n"
        "def f():\n    from services.e.z import w\n"
    )
    assert crossings(tmp_path) == [
        f"{tmp_path.name}/a/m.py:1 imports services.b.x",
        f"{tmp_path.name}/a/m.py:2 imports services.c",
        f"{tmp_path.name}/a/m.py:3 imports services.d",
        f"{tmp_path.name}/a/m.py:7 imports services.e.z",
    ]
