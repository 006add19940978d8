"""Imports go one way: cli -> engines -> format and model -> adapters -> vocabulary.

docs/ARCHITECTURE.md draws the map; this walks every module's relative imports
(also those inside functions, where a lazy import hides a back-edge from a
top-level graph) and fails on one that goes up.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# lowest first; a module may import from its own layer or any lower one
LAYERS = [
    {"exitcodes", "events", "tags", "directio", "errors"},
    {"stream", "fingerprint", "thindelta", "plan", "spool", "lvm", "blockdev", "chunk_writer"},
    {"locks", "lineage", "resume", "inventory", "restored", "apply_records", "stream_check"},
    {"dump", "apply", "imagefile", "retention"},
    {"repo"},
    {"sync"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path) -> set[str]:
    """The lvdiff modules ``path`` imports from, by their top-level name under lvdiff."""
    rel = path.relative_to(SRC / "lvdiff").with_suffix("").parts
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            parts = [*base, *(node.module.split(".") if node.module else [])]
            names = [parts] if node.module else [[*parts, a.name] for a in node.names]
            found |= {p[0] for p in names if p}
    return found - {"__version__"}


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = []
    for path in sorted((SRC / "lvdiff").rglob("*.py")):
        top = path.relative_to(SRC / "lvdiff").parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        assert top in RANK, f"{top} has no layer in this test or in docs/ARCHITECTURE.md"
        for dep in _imports(path):
            if dep in RANK and RANK[dep] > RANK[top]:
                wrong.append(f"{path.relative_to(SRC)} imports {dep}")
    assert not wrong, wrong


def test_the_module_map_names_every_module():
    text = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    for path in sorted((SRC / "lvdiff").rglob("*.py")):
        name = path.relative_to(SRC / "lvdiff").as_posix()
        if not name.endswith("__init__.py"):
            assert f"`{name}`" in text, name
