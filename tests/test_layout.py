"""The package's architecture (STYLE.md): data flows one way, so the import graph has no cycle.

Every ``import`` counts, at module level, inside a function or under ``if TYPE_CHECKING:``: a cycle
closed by an import hidden in a function or an annotation is still a cycle. Implicit imports of parent
packages (``gaincell/__init__``) do not.
"""

import ast
from pathlib import Path

import gaincell

PACKAGE = Path(gaincell.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the gaincell modules it imports anywhere in its body."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]  # fmt: skip
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


#: The subpackages from the top down (STYLE.md): a module may import its own subpackage and those below it.
LAYERS = ("cli", "commands", "demo", "sweep", "evaluation", "adaptation", "hf", "op", "chip", "hardware")
#: Top-level modules every layer may use; they import only each other.
UTILITIES = ("errors", "validation", "atomic", "lock", "jsonl", "tomlfile", "datadir", "devices", "fetch", "noise")


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    if part in UTILITIES:
        return len(LAYERS)
    if part in ("__init__", "__main__"):
        return -1  # the package's front door re-exports from every layer
    return LAYERS.index(part)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["gaincell.op.attention"]  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_library_never_imports_a_command():
    graph = import_graph()
    library = [name for name in graph if not name.startswith("gaincell.commands") and name != "gaincell.cli"]
    for name in library:
        assert not any(target.startswith("gaincell.commands") for target in graph[name]), name


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    upward = [
        f"{name} -> {target}" for name, targets in graph.items() for target in targets if _layer(target) < _layer(name)
    ]
    assert not upward, upward


def test_every_module_belongs_to_a_layer():
    assert all(_layer(name) >= -1 for name in import_graph())  # LAYERS.index raises on a stray top-level module


#: Triton source (both kernel versions): a kernel is one GPU program whose loops cannot be split into
#: Python calls without spilling its registers, so its length follows the op, not the style rule.
TRITON_SOURCES = ("op/kernels/fused_kernels.py", "op/kernels/fused_kernels_v2.py")


def _checked_files():
    return [path for path in PACKAGE.rglob("*.py") if str(path.relative_to(PACKAGE)) not in TRITON_SOURCES]


def test_no_file_is_longer_than_400_lines():
    long = [
        f"{path.relative_to(PACKAGE)} ({n})" for path in _checked_files() if (n := len(path.read_text().splitlines())) > 400
    ]
    assert not long, long


def test_no_function_is_longer_than_a_screen():
    """STYLE.md: short functions with names that say what they do (about 60 lines at most)."""
    long = []
    for path in _checked_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
