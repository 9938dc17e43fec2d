"""The project's import graph: no cycles between its modules, no package importing one above it.

Every import counts, module-level or inside a function (a lazy import is still a dependency), except
those under `if TYPE_CHECKING:` (annotations only). The layers, lowest first:

    protos, data_gen  <  serving  <  beam_pipelines  <  training  <  serving.apps

(`beam_pipelines.indexing` embeds with `serving.embedder`; `training.export` writes what
`serving.embedder` loads; the evaluation indexes with `beam_pipelines`; the demo, the benchmarks
and the `earworm` dispatcher (`serving.apps.earworm`) sit on top: nothing below imports them).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"protos": 0, "data_gen": 0, "serving": 1, "beam_pipelines": 2, "training": 3, "serving.apps": 4}
PACKAGES = ("protos", "data_gen", "serving", "beam_pipelines", "training")


def layer(module: str) -> int:
    """The layer of the longest prefix of `module` in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(module)


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.extend(f"{base}.{a.name}" for a in node.names)
            found.append(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {resolve(t) for t in _imports(ast.parse(path.read_text()), package)}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_project_modules():
    assert cycles(import_graph()) == []


def test_no_package_imports_a_package_above_it():
    upward = sorted((m, t) for m, ts in import_graph().items() for t in ts if layer(t) > layer(m))
    assert upward == []


def test_the_shared_retrieval_types_import_nothing_of_the_retrieval_machinery():
    """`serving.retrieval_types` (QueryEmbedding, RetrievalConfig, ...) is what the embedder, the
    servicer, the evaluation and the apps name; it must stay below all of them."""
    deps = import_graph()["serving.retrieval_types"]
    assert deps <= {"serving.melody_gate"}, deps
    assert "serving.retrieval" not in import_graph()["serving.embedder"]
