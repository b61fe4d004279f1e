"""The import graph of the three packages (every import statement, at module level or inside a function):
no circle, and the library (`dlmarch`) never imports the tools built on it (`trainers`, `conversions`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dlmarch", "trainers", "conversions")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` names in an import (a package's own submodules when imported by name).
    Importing a submodule implicitly runs its parent packages' __init__; that edge is not counted
    (every package's __init__ would otherwise close a loop with its own submodules)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_the_graph_is_read():
    g = graph()
    assert "dlmarch.registry" in g and "dlmarch.models.llada" in g["dlmarch.registry"]
    assert "dlmarch.checkpoint" in g["dlmarch.models.base"]


def test_no_import_circle():
    g = graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_the_library_never_imports_its_tools():
    bad = [(m, n) for m, deps in graph().items() if m.startswith("dlmarch") for n in deps
           if n.split(".")[0] in ("trainers", "conversions")]
    assert not bad, bad


def test_toy_pipelines_share_trainers_toy_not_each_other():
    """The demos and the experiments are entry points: what they share lives in `trainers.toy`, so
    none imports another (a change to one demo never moves another's numbers)."""
    pipelines = ("trainers.demo", "trainers.grpo_demo", "trainers.ar_to_diffusion_demo", "trainers.experiments")

    def pipeline(m):
        return next((p for p in pipelines if m == p or m.startswith(p + ".")), None)

    g = graph()
    assert "trainers.toy" in g["trainers.demo"] and "trainers.toy" in g["trainers.grpo_demo"]
    bad = [(m, n) for m, deps in g.items() if pipeline(m) for n in deps if pipeline(n) not in (None, pipeline(m))]
    assert not bad, bad
