"""The package's architecture, checked from its source: no import cycles, and run time apart from build time.

Every import statement in cmrt/ is read with `ast`, those inside functions included (lazy
imports count: a cycle through them is still a design cycle). An import names the most
specific cmrt module it reaches: `from .x import y` is an edge to `x.y` when that is a module,
else to `x`.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cmrt"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported cmrt module, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    in_function.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target:
                    out.append((target, node.lineno, id(node) in in_function))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == "cmrt" or mod.startswith("cmrt.")):
                continue
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                target = full if full in modules else mod
                out.append((target, node.lineno, id(node) in in_function))
    return out


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = all_modules()
    return {name: [e for e in imports_of(name, path, modules) if e[0] != name] for name, path in modules.items()}


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_through_a_lazy_import():
    graph = {"cmrt.a": [("cmrt.b", 1, False)], "cmrt.b": [("cmrt.c", 3, True)], "cmrt.c": [("cmrt.a", 7, True)], "cmrt.d": []}
    assert cycles(graph) == [["cmrt.a", "cmrt.b", "cmrt.c"]]
    # and it reads imports inside functions, relative and absolute, as module edges
    modules = all_modules()
    edges = imports_of("cmrt.runtime.loading", modules["cmrt.runtime.loading"], modules)
    assert ("cmrt.build.folder", True) in {(t, lazy) for t, _, lazy in edges}
    assert ("cmrt.engine.manifest", False) in {(t, lazy) for t, _, lazy in edges}


def test_no_import_cycle_between_cmrt_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_engine_contract_imports_nothing_from_build_run_serve_or_cli():
    bad = [
        f"{src}:{line} imports {dst}"
        for src, edges in import_graph().items() if src.startswith("cmrt.engine")
        for dst, line, _ in edges if not (dst.startswith("cmrt.engine") or dst == "cmrt._version")
    ]
    assert not bad, bad


def test_run_time_reaches_build_time_only_through_the_lazy_door_in_loading():
    edges = [
        (src, dst, line, lazy)
        for src, es in import_graph().items() if src.startswith(("cmrt.runtime", "cmrt.serve"))
        for dst, line, lazy in es if dst.startswith(("cmrt.build", "cmrt.cli"))
    ]
    assert edges, "the door itself should be found"
    assert all(src == "cmrt.runtime.loading" and lazy for src, _, _, lazy in edges), edges


def test_import_cmrt_runtime_loads_no_build_module_torch_or_diffusers():
    """What `python -X importtime -c "import cmrt, cmrt.runtime"` shows, asserted."""
    code = "import cmrt, cmrt.runtime, cmrt.runtime.loading, cmrt.runtime.pipeline"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "cmrt.runtime.loading" in loaded  # the importtime listing is read
    bad = [m for m in loaded if m.startswith("cmrt.build") or m.split(".")[0] in ("torch", "diffusers", "onnx")]
    assert not bad, bad
