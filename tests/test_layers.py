"""The package's structure, read from its source: no import cycle (at module level; inside
functions, none but through the one loader), no import from a lower layer to a higher one, the
packaged families imported by name only by the loader and the top layer, models and losses
free of the configuration, no source file over 450 lines.

Every module under ``src/condseg`` is parsed (ast) for its ``import`` and ``from`` statements —
at module level and inside functions, relative ones resolved — and for
``import_module("literal")`` calls. ``from package import name`` is an import of the submodule
``name`` where there is one, else of the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "condseg"
MAX_LINES = 450

#: Layers, low to high: a module may import its own layer or a lower one. A module belongs to
#: the layer of its first name below ``condseg`` (``models.registry`` → ``models``).
LAYERS: tuple[tuple[str, ...], ...] = (
    # core: no configuration, no torch model
    ("errors", "files", "filekind", "children", "interrupt", "registry", "recipes", "layout",
     "outputs", "progress", "epoch_log", "tables"),
    # schema + merge (reads recipes through the method registry); the records of a run
    ("config", "records"),
    ("data",),
    ("viz",),  # drawing from arrays (overlays, maps, figures); imports only epoch_log
    ("models",),  # the contract, registries, blocks, encoders, model files, plug-in attachment
    ("losses",),  # the loss contract and the shared losses
    ("methods",),  # one folder per family
    ("inference",),
    ("evaluation",),
    ("training",),
    ("convert", "bench", "demo", "study"),
    # the public API, the command, and the trainer variants nnU-Net loads (they build
    # condseg's networks and plug-ins inside another framework, as the command does)
    ("cli", "__init__", "__main__", "nnunet"),
)

#: The one loader of the packaged families: the first lookup in any registry imports them.
LOADER = "condseg.registry"
FAMILIES = "condseg.methods"

#: Upward imports allowed, each for its reason.
ALLOWED_UPWARD: set[tuple[str, str]] = {
    (LOADER, FAMILIES),
    # The version a model file records: a constant __init__ defines and which imports nothing.
    ("condseg.models.model_file", "condseg"),
    ("condseg.study.report", "condseg"),  # and the one a study's report records
}

#: Imports that close a cycle through a function-level import: only the loader (every family
#: registers itself in the registries that load it).
CYCLE_EDGES: set[tuple[str, str]] = {
    (LOADER, FAMILIES),
}

def layer_of(module: str) -> int:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate(LAYERS):
        if name in names:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS; add it")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported condseg module, whether the import runs at module level) for each import."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, top: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, top
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield (sub if is_module(sub) else base), top
            elif (isinstance(child, ast.Call) and getattr(child.func, "id", getattr(
                    child.func, "attr", None)) == "import_module" and child.args
                    and isinstance(child.args[0], ast.Constant)):
                yield child.args[0].value, top
            yield from visit(child, inner)

    for name, top in visit(tree, True):
        if name == "condseg" or name.startswith("condseg."):
            yield name, top


def graph() -> dict[str, list[tuple[str, bool]]]:
    return {module_name(path): sorted(set(imports_of(path)))
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_a_layer() -> None:
    for module in graph():
        layer_of(module)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each back edge of a depth-first walk (none: the graph is acyclic)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target):], target])
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    return found


def test_no_import_cycle_at_module_level() -> None:
    edges = {m: {t for t, top in imports if top and t != m} for m, imports in graph().items()}
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_import_cycle_even_inside_functions_but_through_the_loader() -> None:
    """A function-level import that closes a cycle works only by the order of first calls."""
    every = {(m, t) for m, imports in graph().items() for t, _ in imports if t != m}
    edges: dict[str, set[str]] = {}
    for module, target in every - CYCLE_EDGES:
        edges.setdefault(module, set()).add(target)
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
    stale = sorted(CYCLE_EDGES - every)
    assert not stale, f"cycle-closing imports that no longer exist (remove them): {stale}"


def test_models_and_losses_do_not_import_the_configuration() -> None:
    below = ("condseg.models", "condseg.losses", "condseg.methods")
    found = sorted(m for m, imports in graph().items() for t, _ in imports
                   if m.startswith(below) and t == "condseg.config")
    assert not found, f"modules importing condseg.config: {found}"


def upward_imports() -> set[tuple[str, str]]:
    return {(module, target) for module, imports in graph().items() for target, _ in imports
            if layer_of(target) > layer_of(module)}


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    found = upward_imports()
    unexplained = sorted(found - ALLOWED_UPWARD)
    assert not unexplained, "imports from a lower layer to a higher one: " + ", ".join(
        f"{m} -> {t}" for m, t in unexplained)
    stale = sorted(ALLOWED_UPWARD - found)
    assert not stale, f"allowed upward imports that no longer exist (remove them): {stale}"


def test_only_the_loader_and_the_top_layer_import_the_families() -> None:
    top = len(LAYERS) - 1
    importers = sorted(
        (module, target) for module, imports in graph().items() for target, _ in imports
        if (target == FAMILIES or target.startswith(FAMILIES + "."))
        and not (module == FAMILIES or module.startswith(FAMILIES + "."))
        and module != LOADER and layer_of(module) != top
    )
    assert not importers, f"modules importing a family by name: {importers}"


def test_no_source_file_over_the_limit() -> None:
    lengths = {str(path.relative_to(SRC)): len(path.read_text().splitlines())
               for path in PACKAGE.rglob("*.py")}
    long = {path for path, lines in lengths.items() if lines > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: " + ", ".join(
        f"{p} ({lengths[p]})" for p in sorted(long))
