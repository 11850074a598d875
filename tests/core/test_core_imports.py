"""core/ is pure decisions: no mech/ (protocol knowledge, DNS), no config, no I/O, no asyncio.

What core needs from outside (the Public Suffix List for the accredited list, the date)
is passed in by the caller; this test keeps it that way.
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


# Reaching the network, the disk, the clock's owner or the config from core is a layering
# bug: decisions take their inputs as arguments so both the CLI and the gateway can share them.
FORBIDDEN = ("securemail.config", "securemail.gateway", "securemail.check", "securemail.cli",
             "securemail.dns", "securemail.files", "asyncio", "os", "socket", "tempfile",
             "pathlib", "sqlite3", "ssl")  # fmt: skip


def test_core_is_free_of_io_and_config():
    offending = {
        path.name: [
            n for n in _imports(path) if any(n == f or n.startswith(f"{f}.") for f in FORBIDDEN)
        ]
        for path in sorted(CORE.glob("*.py"))
    }
    assert {name: found for name, found in offending.items() if found} == {}
