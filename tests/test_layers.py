"""The package's shape: imports only go down data <- model <- train <- align <- use/course <- cli, with no
cycle, counting every import in a module (also those inside functions)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minimind"
LAYERS = {"data": 0, "model": 1, "train": 2, "align": 3, "use": 4, "course": 4}
TOP = 5  # minimind/__init__.py, cli/, __main__.py


def module_name(path: Path) -> str:
    parts = ("minimind",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every minimind module that `path` imports, resolved to a module name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minimind")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minimind"):
                continue
            for alias in node.names:  # `from pkg import module` names a module; else the name is in target
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found - {name}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def test_every_import_resolves_to_a_module():
    unknown = {f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if t not in MODULES}
    assert not unknown, sorted(unknown)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_go_down(name):
    upward = [t for t in GRAPH[name] if layer(t) > layer(name)]
    assert not upward, f"{name} (layer {layer(name)}) imports from a later layer: {upward}"
    if name.startswith("minimind.use"):
        assert not [t for t in GRAPH[name] if t.startswith("minimind.course")], "use/ must not import course/"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_cycle_and_an_upward_import(monkeypatch):
    """The two checks above can fail: a planted cycle and a planted upward import are caught."""
    monkeypatch.setitem(GRAPH, "minimind.model.config", GRAPH["minimind.model.config"] | {"minimind.model.transformer"})
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
    monkeypatch.setitem(GRAPH, "minimind.data.files", {"minimind.train.loop"})
    with pytest.raises(AssertionError, match="later layer"):
        test_imports_only_go_down("minimind.data.files")
