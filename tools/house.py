"""The house's shape: import floors, module sizes, private imports and repeated blocks in `btc/`.

    python tools/house.py            # prints the report; tests/test_house.py pins the targets

A module's *floor* is 1 + the highest floor of the btc modules it imports (anywhere in the file,
including imports inside functions); modules that import no btc module are on floor 1.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "btc"
BLOCK = 6  # lines: a repeated block of this many non-blank lines or more is reported


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Map each btc module to the btc modules it imports."""
    graph = {}
    for path in sorted(package.glob("*.py")):
        name = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "btc":
                    found |= {a.name for a in node.names if (package / f"{a.name}.py").is_file()}
                elif node.module.startswith("btc."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("btc.")}
        graph[name] = found - {name, "__init__"}
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of every module; raises `ValueError` on an import cycle."""
    out: dict[str, int] = {}

    def floor(name, stack=()):
        if name in stack:
            raise ValueError(f"import cycle: {' -> '.join((*stack, name))}")
        if name not in out:
            out[name] = 1 + max((floor(d, (*stack, name)) for d in graph[name]), default=0)
        return out[name]

    for name in graph:
        floor(name)
    return out


def private_imports(package: Path = PACKAGE) -> list[str]:
    """`from btc.x import _name` and `x._name` uses across modules."""
    found = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module == "btc" for a in n.names}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("btc"):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and a.name != "__version__"]  # fmt: skip
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in modules):  # fmt: skip
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    return found


def repeated_blocks(package: Path = PACKAGE, size: int = BLOCK, also=()) -> list[list[str]]:
    """Places where the same `size` consecutive non-blank, non-comment lines occur twice or more.

    `also`: more folders whose `.py` files join the search (named `folder/file.py`), so a block
    copied from the package into a test, a benchmark or a tool is found too.
    """
    seen = defaultdict(list)
    files = [(p, p.name) for p in sorted(package.glob("*.py"))]
    files += [(p, f"{d.name}/{p.name}") for d in also for p in sorted(Path(d).glob("*.py"))]
    for path, label in files:
        lines = [(i + 1, line.strip()) for i, line in enumerate(path.read_text().splitlines())]
        lines = [(i, s) for i, s in lines if s and not s.startswith(("#", '"""', "'''"))]
        for k in range(len(lines) - size + 1):
            window = [s for _, s in lines[k : k + size]]
            if sum(len(s) > 12 for s in window) < size - 1:  # skip runs of `)` / `]` / `else:`
                continue
            seen[hashlib.sha1("\n".join(window).encode()).hexdigest()].append(
                f"{label}:{lines[k][0]}"
            )
    groups, covered = [], set()
    for places in seen.values():
        if len(places) > 1 and not set(places) & covered:
            groups.append(places)
        covered |= set(places)
    return groups


def report(package: Path = PACKAGE) -> dict:
    """Everything above, JSON-ready."""
    graph = imports(package)
    level = floors(graph)
    sizes = {p.stem: len(p.read_text().splitlines()) for p in package.glob("*.py")}
    largest = max(sizes, key=sizes.get)
    return {"floors": max(level.values()), "by_floor": {f: sorted(m for m in level if level[m] == f)
            for f in range(1, max(level.values()) + 1)}, "largest": (largest, sizes[largest]),
            "over_400": sorted(m for m, n in sizes.items() if n > 400),
            "private_imports": private_imports(package), "repeated": repeated_blocks(package),
            "graph": {k: sorted(v) for k, v in graph.items()}}  # fmt: skip


if __name__ == "__main__":
    r = report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE)
    print(f"floors: {r['floors']}")
    for f, names in reversed(r["by_floor"].items()):
        print(f"  {f}: {', '.join(names)}")
    print(f"largest module: {r['largest'][0]}.py ({r['largest'][1]} lines)")
    print(f"modules over 400 lines: {', '.join(r['over_400']) or 'none'}")
    print(f"private names imported across modules: {len(r['private_imports'])}")
    for line in r["private_imports"]:
        print(f"  {line}")
    print(f"repeated blocks of >= {BLOCK} lines: {len(r['repeated'])}")
    for places in r["repeated"]:
        print(f"  {', '.join(places)}")
