"""The package's import graph: no cycles, the commands on top, the value modules free of TVM.

Read with ``ast`` from the sources (every import, function-local ones
included), so the test needs nothing imported.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tvm_tasd"
#: Modules that must not need TVM: costing, planning and reporting run without the compiler.
TVM_FREE = ("config", "decompose", "hardware", "cost", "layer", "candidates", "policy", "plan", "report", "svg", "io",
            "reference", "batchnorm_fold")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time (absolute names; ``from . import x`` counted as its package)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} - {name} for name, path in modules.items()}


def _reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles(graph):
    # A package's __init__ importing its own submodules is the normal way a package exports them.
    cyclic = [name for name in graph
              if any(name in _reachable(graph, m) for m in graph[name] if not name.startswith(m + "."))]
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_the_library_never_imports_the_commands(graph):
    upward = {name: sorted(m for m in deps if m.startswith("tvm_tasd.cli"))
              for name, deps in graph.items() if not name.startswith("tvm_tasd.cli")}
    assert not {k: v for k, v in upward.items() if v}


def test_tasd_and_tvmc_commands_do_not_import_each_other(graph):
    assert "tvm_tasd.cli.tvmc" not in _reachable(graph, "tvm_tasd.cli.tasd")
    assert "tvm_tasd.cli.tasd" not in _reachable(graph, "tvm_tasd.cli.tvmc")


def test_the_library_does_not_reach_the_demo_model(graph):
    users = sorted(name for name, deps in graph.items() if "tvm_tasd.models.digits" in deps)
    assert all(name.startswith("tvm_tasd.cli") for name in users), users


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("module", TVM_FREE)
def test_value_modules_do_not_need_tvm(module):
    """Transitively, at import time, nothing but the TVM-free modules and no `tvm` (hardware.tvm_target
    imports TVM inside the one method that builds a TVM target)."""
    seen, todo = set(), [f"tvm_tasd.{module}"]
    while todo:
        name = todo.pop()
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():  # a package
            path = path.with_suffix("") / "__init__.py"
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top_level:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n == "tvm" or n.startswith("tvm.") for n in names if node.__dict__.get("level", 0) == 0), \
                f"{name} imports TVM"
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0]
                targets = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
                for target in (t if _is_module(t) else base for t in targets):  # `from . import name`: a module?
                    if target != "tvm_tasd" and target not in seen:
                        seen.add(target)
                        todo.append(target)
    assert {s.removeprefix("tvm_tasd.").split(".")[0] for s in seen} <= set(TVM_FREE)
