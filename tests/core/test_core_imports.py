"""core/ is pure decisions: it must not reach into mech/ (protocol knowledge, DNS, I/O).

What core needs from mech (the Public Suffix List for the accredited list) is passed in
by the caller; this test keeps it that way.
"""

import ast
from pathlib import Path

import securemail.core

CORE = Path(securemail.core.__file__).parent


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_core_imports_nothing_from_mech():
    modules = sorted(CORE.glob("*.py"))
    assert any(path.name == "accredited.py" for path in modules)
    offending = {
        path.name: [name for name in _imports(path) if name.startswith("securemail.mech")]
        for path in modules
    }
    assert {name: found for name, found in offending.items() if found} == {}
