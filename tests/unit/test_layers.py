"""The architecture's two rules, checked on the source (see docs/architecture.md).

1. Imports point down the layers of ``tools/import_graph.py`` (``LAYERS``),
   and an import inside a function says why.
2. Only ``conductor/core`` writes a node's state fields.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import shutil
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The fields only the core may change (a node's creation sets their first values).
STATE_FIELDS = frozenset({"provision_state", "power_state", "active_request_id", "reservation"})
#: The simulator's machines have a power state of their own (not a node's).
NOT_NODES = ("conductor/bmcsim/",)


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_point_down_the_layers() -> None:
    assert _import_graph().check() == []


def test_the_check_sees_an_upward_import_and_an_unexplained_local_one(tmp_path) -> None:
    graph = _import_graph()
    # Every module is in a layer, and the layers rank as documented.
    assert graph.layer_of("conductor.core.states")[1] == "core"
    assert graph.layer_of("conductor.drivers.pxe")[0] < graph.layer_of("conductor.core.agent")[0]
    assert graph.layer_of("conductor.engine.worker")[1] == "entry points"
    assert graph.layer_of("conductor.engine.runner")[1] == "workers"
    # A copy of the package where the core imports the service layer, and a
    # driver imports something inside a function without saying why.
    shutil.copytree(ROOT / "conductor", tmp_path / "conductor")
    core = tmp_path / "conductor" / "core" / "states.py"
    core.write_text(core.read_text() + "\nfrom conductor.service import nodes\n")
    driver = tmp_path / "conductor" / "drivers" / "fake.py"
    driver.write_text(driver.read_text() + "\n\ndef later():\n    from conductor import bootfiles\n")
    problems = graph.check(tmp_path)
    assert len(problems) == 2
    assert "conductor.core.states (core) imports conductor.service.nodes (services), a higher layer" in problems[0]
    assert "import of conductor.bootfiles inside a function without a comment saying why" in problems[1]


def state_writes() -> Counter[tuple[str, str]]:
    """(file, field) -> how many statements there change a node state field."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted((ROOT / "conductor").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith(NOT_NODES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in STATE_FIELDS:
                    found[(rel, target.attr)] += 1
            # sa.update(...).values(field=...) or .values({"field": ...})
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values"
                    and isinstance(node.func.value, ast.Call)):
                names = [k.arg for k in node.keywords if k.arg]
                for arg in node.args:
                    if isinstance(arg, ast.Dict):
                        names += [k.value for k in arg.keys if isinstance(k, ast.Constant)]
                for name in names:
                    if name in STATE_FIELDS:
                        found[(rel, name)] += 1
    return found


def test_only_the_core_writes_node_state_fields() -> None:
    writes = state_writes()
    outside = sorted(f"{file}: {field}" for (file, field) in writes if not file.startswith("conductor/core/"))
    assert outside == []
    # Each field has its writer (the scan finds them: it is not vacuous).
    assert {field for (_file, field) in writes} == STATE_FIELDS


if __name__ == "__main__":
    for (file, field), count in sorted(state_writes().items()):
        print(f"{field:18} {count:3}  {file}")
