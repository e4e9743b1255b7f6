#!/usr/bin/env python3
"""Checks the layering of proxy/src: prints the import graph between the
top-level modules and exits 1 if it has a cycle, or if a module of the data
path (edge, gateway, tunnel) imports the control plane.

Reads `crate::a::b` and `super::x` paths in each file (comments excluded);
run by scripts/test.sh, so a new cycle fails CI.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "proxy" / "src"
DATA_PATH = {"edge", "gateway", "tunnel"}


def module_of(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def deps(path: pathlib.Path, me: list[str]) -> set[tuple[str, ...]]:
    text = "\n".join(
        line.split("//")[0] for line in path.read_text().splitlines()
    )
    found = set()
    for m in re.finditer(r"\bcrate((?:::\w+)+)", text):
        found.add(tuple(m.group(1).strip(":").split("::")))
    # `use crate::a::{b, c::d}` and `use super::{x, y}`: one level of braces.
    for m in re.finditer(r"\bcrate((?:::\w+)*)::\{([^}]*)\}", text):
        head = m.group(1).strip(":").split("::") if m.group(1) else []
        for item in m.group(2).split(","):
            item = item.strip().split("::")[0]
            if item and item != "self":
                found.add(tuple(head + [item]))
    for m in re.finditer(r"\bsuper((?:::\w+)*)::\{([^}]*)\}", text):
        head = m.group(1).strip(":").split("::") if m.group(1) else []
        for item in m.group(2).split(","):
            item = item.strip().split("::")[0]
            if item and item != "self":
                found.add(tuple(me[:-1] + head + [item]))
    # `super` is the parent module, for a mod.rs as for any other file.
    for m in re.finditer(r"\bsuper((?:::\w+)+)", text):
        found.add(tuple(me[:-1] + m.group(1).strip(":").split("::")))
    return found


def main() -> int:
    files = [p for p in SRC.rglob("*.rs") if p.name not in ("main.rs", "allocator.rs")]
    modules = {tuple(module_of(f)) for f in files}
    top: dict[str, set[str]] = {}
    inner: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for f in files:
        me = module_of(f)
        if not me:
            continue
        for d in deps(f, me):
            if (d[0],) not in modules:
                continue  # an item of the crate root, or not a path at all
            if d[0] != me[0]:
                top.setdefault(me[0], set()).add(d[0])
            elif len(me) > 1 and len(d) > 1 and d[1] != me[1] and (d[0], d[1]) in modules:
                # Between sibling files of one folder; a child using its
                # parent's items (mod.rs) is how Rust modules are built.
                inner.setdefault((me[0], me[1]), set()).add((d[0], d[1]))
    errors = []
    for m in sorted(DATA_PATH):
        if "control" in top.get(m, set()):
            errors.append(f"{m} (data path) imports control")

    def cycles(graph):
        seen, stack, out = set(), [], []

        def visit(n):
            if n in stack:
                out.append(stack[stack.index(n):] + [n])
                return
            if n in seen:
                return
            seen.add(n)
            stack.append(n)
            for d in sorted(graph.get(n, ())):
                visit(d)
            stack.pop()

        for n in sorted(graph):
            visit(n)
        return out

    for c in cycles(top) + cycles(inner):
        errors.append("import cycle: " + " -> ".join(map(lambda x: "::".join(x) if isinstance(x, tuple) else x, c)))
    for m in sorted(top):
        print(f"{m:8} -> {', '.join(sorted(top[m]))}")
    for m in sorted(inner):
        print(f"{'::'.join(m):22} -> {', '.join('::'.join(d) for d in sorted(inner[m]))}")
    for e in errors:
        print("error:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
