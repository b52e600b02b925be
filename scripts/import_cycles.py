"""Import cycles among a package's modules, function-level imports included.

    python scripts/import_cycles.py [package_dir]     (default: fastbert)

Prints each cycle (a strongly connected set of modules, with the imports that join them) and exits 1 if
there is one, else prints "no import cycles among N modules" and exits 0. An import of `a.b.c` counts as
an edge to `a.b.c` only (not to the packages above it); `from a import b` to `a.b` when that is a module,
else to `a`. Symlinked directories (fastbert/kernels -> ../kernels) are not followed.
"""
from __future__ import annotations

import ast
import os
import sys


def modules(root: str) -> dict[str, str]:
    """{dotted module name: file} of the package at `root` (its directory name is the top-level name)."""
    top = os.path.basename(os.path.normpath(root))
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not os.path.islink(os.path.join(d, x)) and x != "__pycache__")
        rel = os.path.relpath(d, root)
        prefix = top if rel == "." else top + "." + rel.replace(os.sep, ".")
        for f in sorted(files):
            if f.endswith(".py"):
                out[prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"] = os.path.join(d, f)
    return out


def imports(name: str, path: str, known: dict[str, str]) -> dict[str, int]:
    """{imported module of `known`: first line} for every import statement anywhere in the file."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            if t in known and t != name:
                out.setdefault(t, node.lineno)
    return out


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(graph[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return comps


def main(root: str = "fastbert") -> int:
    known = modules(root)
    graph = {m: imports(m, p, known) for m, p in known.items()}
    comps = strongly_connected(graph)
    for comp in comps:
        print("import cycle among " + ", ".join(comp))
        for m in comp:
            for t, line in graph[m].items():
                if t in comp:
                    print(f"  {known[m]}:{line} imports {t}")
    if not comps:
        print(f"no import cycles among {len(known)} modules of {root}")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
