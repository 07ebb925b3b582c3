"""Print the import graph between the conductor's packages, and check its layers.

Usage: python tools/import_graph.py [--modules] [--local] [--check]

Each line is ``importer -> imported`` at the granularity of the top-level
units (``conductor.api``, ``conductor.service``, ``conductor.models``...).
Imports inside functions are marked ``(local)``; ``--local`` lists each of
them with its file and line.  Cycles between units are printed at the end.
The graph is read from the source with ``ast``: nothing is imported.

``--check`` prints every import that points up the layers of
:data:`LAYERS` (and every import inside a function without a comment saying
why) and exits 1 if there is any; ``tests/unit/test_layers.py`` runs it.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "conductor"


#: The layers, top first: a module may import its own layer and the ones below,
#: never one above.  A module belongs to the longest prefix listed.  Imports
#: under ``if TYPE_CHECKING:`` (annotations only) are not counted.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", (
        "conductor.__main__", "conductor.cli", "conductor.api", "conductor.wsgi", "conductor.gunicorn_app",
        "conductor.supervisor", "conductor.demo", "conductor.vmlab", "conductor.bootstrap", "conductor.bmcsim",
        "conductor.ramdisk.cli",
        # The worker processes and the job functions RQ calls by name.
        "conductor.engine.worker", "conductor.engine.jobs", "conductor.callbacks.worker", "conductor.callbacks.jobs",
    )),
    ("services", (
        "conductor.service", "conductor.callbacks.subscriptions", "conductor.auth.tokens",
    )),
    ("workers", (
        "conductor.engine", "conductor.callbacks.delivery", "conductor.callbacks.outbox", "conductor.callbacks.retry",
        # The DHCP host entries follow the nodes booting from the network (asks the drivers which do).
        "conductor.dhcp",
    )),
    ("drivers", ("conductor.drivers",)),
    ("core", ("conductor.core",)),
    ("platform", (
        # Connections, queues, throttles, metrics, secrets: what every layer above uses.
        "conductor.context", "conductor.database", "conductor.workqueue", "conductor.metrics", "conductor.throttle",
        "conductor.callbacks", "conductor.eventlog", "conductor.auth", "conductor.secretbox", "conductor.datadir",
        "conductor.bootfiles",
        "conductor.embedded_redis", "conductor.procs", "conductor.logs", "conductor.keys", "conductor.sealing",
        "conductor.macs", "conductor.images", "conductor.httpclient",
        # HTTPS settings checked for gunicorn; systemd units written for `conductor install-units`.
        "conductor.tls", "conductor.units",
        # The ramdisk and ISO builders (stdlib and Debian tools only): the redfish-virtual-media
        # boot interface builds each phase's ISO; their command line is an entry point.
        "conductor.ramdisk",
    )),
    ("foundation", (
        "conductor.models", "conductor.fsm", "conductor.settings", "conductor.exceptions", "conductor",
    )),
]


def layer_of(module: str) -> tuple[int, str]:
    """The rank (0 = top) and name of ``module``'s layer."""
    best: tuple[int, int, str] = (-1, 0, "")
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), rank, name)
    if best[0] < 0:
        raise KeyError(f"{module} is in no layer of tools/import_graph.py LAYERS")
    return best[1], best[2]


#: A comment starting with this, at the start of a line, gives the reason for
#: all of its module's imports inside functions.
MODULE_REASON = "# Imports inside functions:"


def check(root: pathlib.Path = ROOT) -> list[str]:
    """Every upward import, and every function-level import without a reason, in ``root``'s package."""
    problems = []
    for path in sorted((root / "conductor").rglob("*.py")):
        current, found = imports(path, root)
        lines = path.read_text().splitlines()
        module_reason = any(line.startswith(MODULE_REASON) for line in lines)
        rank, name = layer_of(current)
        for target, local, type_only, line in found:
            if not target.startswith("conductor.") or type_only or target == current:
                continue
            if target.startswith("conductor.migrations"):
                continue
            other_rank, other_name = layer_of(target)
            where = f"{path.relative_to(root)}:{line}"
            if other_rank < rank:
                problems.append(f"{where}: {current} ({name}) imports {target} ({other_name}), a higher layer")
            if local and not module_reason and not _has_reason(lines, line):
                problems.append(f"{where}: import of {target} inside a function without a comment saying why")
    return problems


def _has_reason(lines: list[str], line: int) -> bool:
    """A comment on the import's line or right above it (or above a run of imports)."""
    index = line - 1
    if "#" in lines[index]:
        return True
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("from ", "import ")):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("#")


def unit_of(module: str, modules: bool) -> str | None:
    parts = module.split(".")
    if parts[0] != "conductor" or len(parts) < 2:
        return None
    if modules:
        return module
    return ".".join(parts[:2])


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: pathlib.Path = ROOT) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def resolve(node: ast.ImportFrom, current: str, is_pkg: bool, root: pathlib.Path = ROOT) -> list[str]:
    """The modules ``from X import a, b`` imports: ``X.a`` where ``a`` is a submodule, else ``X``."""
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = current.split(".") if is_pkg else current.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return sorted({f"{base}.{a.name}" if is_module(f"{base}.{a.name}", root) else base for a in node.names})


def imports(path: pathlib.Path, root: pathlib.Path = ROOT):
    tree = ast.parse(path.read_text(), str(path))
    current = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    found = []

    def visit(node, local, type_only):
        for child in ast.iter_child_nodes(node):
            child_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            child_type_only = type_only
            if isinstance(child, ast.If):
                test = ast.unparse(child.test)
                if "TYPE_CHECKING" in test:
                    for sub in child.body:
                        visit_one(sub, child_local, True)
                    for sub in child.orelse:
                        visit_one(sub, child_local, type_only)
                    continue
            visit_one(child, child_local, child_type_only)

    def visit_one(child, local, type_only):
        if isinstance(child, ast.Import):
            for alias in child.names:
                found.append((alias.name, local, type_only, child.lineno))
        elif isinstance(child, ast.ImportFrom):
            for name in resolve(child, current, is_pkg, root):
                found.append((name, local, type_only, child.lineno))
        else:
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)), type_only)

    visit(tree, False, False)
    return current, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="one node per module, not per package")
    parser.add_argument("--local", action="store_true", help="list every import made inside a function")
    parser.add_argument("--check", action="store_true", help="check the layers; exit 1 on a violation")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) if problems else "layers: ok")
        return 1 if problems else 0

    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    local_sites = []
    for path in sorted(PKG.rglob("*.py")):
        current, found = imports(path)
        src = unit_of(current, args.modules)
        for name, local, type_only, line in found:
            dst = unit_of(name, args.modules)
            if dst is None or src is None or dst == src or type_only:
                continue
            edges[(src, dst)].add("local" if local else "top")
            if local:
                local_sites.append(f"{path.relative_to(ROOT)}:{line} -> {name}")

    for (src, dst), kinds in sorted(edges.items()):
        mark = "" if "top" in kinds else "  (local)"
        print(f"{src} -> {dst}{mark}")

    graph = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    cycles = strongly_connected(graph)
    print()
    if cycles:
        for comp in cycles:
            print("cycle: " + ", ".join(sorted(comp)))
    else:
        print("no cycles")
    if args.local:
        print()
        print(f"{len(local_sites)} imports inside functions:")
        for site in local_sites:
            print("  " + site)
    return 0


def strongly_connected(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(graph) | {d for ds in graph.values() for d in ds}
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
