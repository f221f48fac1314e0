"""The import structure: no module imports one that imports it back, and imports run from higher layers to
lower ones (docs/architecture.md). Walks the source with ast: module-level and function-level imports count,
`if TYPE_CHECKING:` blocks do not (they never run)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# Layers, lowest first, by module-name prefix (the longest matching prefix wins). A module may import its own
# layer and the ones below it.
LAYERS = [
    ("foundation", ["sharpshift.errors", "sharpshift.steps", "sharpshift.plugins", "sharpshift.config",
                    "sharpshift.config.amcl", "sharpshift.config.dsa", "sharpshift.config.shift",
                    "sharpshift.config.sharpness", "sharpshift.config.robustness",
                    "sharpshift.config.report", "sharpshift.process_env", "sharpshift.cli_args"]),
    ("blocks", ["sharpshift.losses", "sharpshift.models", "sharpshift.data", "sharpshift.optim", "sharpshift.export",
                "sharpshift.nonfinite", "sharpshift.throughput", "sharpshift.evaluation", "sharpshift"]),
    ("methods and add-ons", ["sharpshift.methods", "sharpshift.amcl", "sharpshift.dsa", "sharpshift.shift",
                             "sharpshift.sharpness", "sharpshift.addons"]),
    ("training", ["sharpshift.train", "sharpshift.checkpoint", "sharpshift.resume", "sharpshift.supervised_module",
                  "sharpshift.precision_choice"]),
    ("evaluation, diagnostics, report", [
        "sharpshift.evaluation.run", "sharpshift.evaluation.robustness", "sharpshift.diagnostics", "sharpshift.report",
        "sharpshift.supervised"]),
    ("commands", ["sharpshift.cli", "sharpshift.bench", "sharpshift.commands"]),
]
MAX_UPWARD = 8


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """module -> the sharpshift modules it imports (a `from pkg import name` counts pkg.name when it is a module)."""
    files = {module_name(p, root): p for p in (root / "sharpshift").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sharpshift")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sharpshift"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                found |= subs or {node.module}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def layer(module: str) -> int:
    best, level = -1, 0
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    return level


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer(b) > layer(a))


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(imports(SRC)) == []


def test_imports_from_a_lower_layer_to_a_higher_one_stay_few():
    found = upward(imports(SRC))
    assert len(found) <= MAX_UPWARD, "\n".join(found)


def test_the_walker_sees_cycles_and_upward_imports(tmp_path):
    pkg = tmp_path / "sharpshift"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "__init__.py").write_text("from sharpshift.train import x\n")
    (pkg / "train.py").write_text("def f():\n    import sharpshift.methods\n")
    (pkg / "errors.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sharpshift.cli\n")
    graph = imports(tmp_path)
    assert cycles(graph) == [["sharpshift.methods", "sharpshift.train"]]
    assert upward(graph) == ["sharpshift.methods -> sharpshift.train"] and graph["sharpshift.errors"] == set()
