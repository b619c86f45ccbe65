"""The one-way flow of docs/ARCHITECTURE.md, checked on the source.

Every import a module can run is read from its syntax tree — module level and lazy imports
inside functions alike — so a rule breaks here the day someone writes the import, not the
day a user's install lacks ray. A second check imports the light entry points in a fresh
interpreter and looks at what they actually loaded. And every module must have its row in
the ARCHITECTURE.md module map, so the map cannot fall behind the code.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "platform" / "vaelab"

MODEL_MATH = {"vaelab.model", "vaelab.objectives", "vaelab.smoothing"}
# the Ray-runner side of studies/: the only modules that may import ray
RAY_SIDE = {"vaelab.studies.runner", "vaelab.studies.trial", "vaelab.studies.cluster",
            "vaelab.studies.tuner", "vaelab.studies.progress"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Absolute dotted names of every import statement in the module, lazy ones included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from vaelab import train` imports the module vaelab.train
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                      for alias in node.names}
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def internal(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] == "vaelab"}


def test_the_walk_sees_lazy_and_relative_imports():
    # studies/runner.py imports ray inside functions only; train.py imports relatively
    assert "ray" in top(imports_of("vaelab.studies.runner"))
    assert {"vaelab.model", "vaelab.step"} <= imports_of("vaelab.train")


@pytest.mark.parametrize("name", sorted(MODEL_MATH))
def test_model_math_imports_only_torch(name):
    third_party = {n for n in top(imports_of(name)) if n not in sys.stdlib_module_names}
    assert third_party <= {"torch", "vaelab"}, name
    assert internal(imports_of(name)) <= MODEL_MATH, name


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("vaelab.report")))
def test_reports_import_neither_torch_nor_ray(name):
    assert not top(imports_of(name)) & {"torch", "ray"}, name
    reached = {m for m in internal(imports_of(name)) if m in MODULES}
    assert all(m.startswith(("vaelab.report", "vaelab.tracking.", "vaelab.errors", "vaelab.config"))
               for m in reached), (name, reached)


def test_no_import_cycles():
    """No module reaches itself through vaelab imports (lazy and typing-only ones included):
    a cycle means two modules share a piece that belongs in one of them."""
    graph = {n: {m for m in internal(imports_of(n)) if m in MODULES and m != n} for n in MODULES}
    cycles = []
    for start in graph:
        seen, frontier = set(), set(graph[start])
        while frontier:
            node = frontier.pop()
            if node == start:
                cycles.append(start)
                break
            if node not in seen:
                seen.add(node)
                frontier |= graph[node]
    assert cycles == [], f"modules that import themselves through others: {sorted(cycles)}"


def test_nothing_imports_the_cli():
    importers = [n for n in MODULES if n != "vaelab.cli" and "vaelab.cli" in imports_of(n)]
    assert importers == []


def test_only_tracking_imports_mlflow():
    importers = {n for n in MODULES if "mlflow" in top(imports_of(n))}
    assert importers and all(n.startswith("vaelab.tracking.") for n in importers), importers


def test_only_the_ray_runner_side_imports_ray():
    importers = {n for n in MODULES if "ray" in top(imports_of(n))}
    assert importers <= RAY_SIDE, importers - RAY_SIDE


def test_the_training_core_imports_neither_ray_nor_mlflow():
    core = [n for n in MODULES if n.count(".") == 1 and n not in {"vaelab.cli", "vaelab.train_one"}]
    for name in core:
        assert not top(imports_of(name)) & {"ray", "mlflow"}, name


def test_light_entry_points_load_no_heavy_library():
    """What `vaelab validate` and the report side actually load, in a fresh interpreter."""
    code = ("import sys, json; import vaelab, vaelab.studies, vaelab.studies.expand, vaelab.report.build; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert not loaded & {"torch", "ray"}, sorted(loaded & {"torch", "ray"})


# a dotted vaelab name in a string that is not a module: an MLflow tag name (`vaelab.budget`)
TAG_LITERAL = re.compile(r"(?<![\w/.])vaelab\.([a-z_]+)")
# trial.py still spells its tags; tags.py has their constants (TAG_RAY_NODE, TAG_ERROR, ...)
TAGS_PENDING = {"vaelab.studies.trial"}


def tag_literals(name: str) -> list[str]:
    """String constants of the module (docstrings aside) that spell a vaelab tag name."""
    tree = ast.parse(MODULES[name].read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [m.group(0) for m in TAG_LITERAL.finditer(node.value)
                      if f"vaelab.{m.group(1)}" not in MODULES]
    return found


def test_tag_names_are_spelled_only_in_tags_py():
    spelled = {n: tag_literals(n) for n in MODULES if n != "vaelab.tracking.tags" and n not in TAGS_PENDING}
    assert {n: s for n, s in spelled.items() if s} == {}, "use the constants of tracking/tags.py"


def test_every_module_has_its_row_in_the_architecture_map():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    rows = {cell.strip().strip("`") for line in text.splitlines() if line.startswith("| `")
            for cell in line.split("|")[1].split(",")}
    missing = [str(p.relative_to(PACKAGE)) for n, p in MODULES.items()
               if p.name != "__init__.py" and str(p.relative_to(PACKAGE)) not in rows]
    assert missing == [], f"add these modules to the docs/ARCHITECTURE.md module map: {missing}"
