"""The house rules a reviewer would otherwise check by eye (docs/engineering.md)."""

import ast

from helpers import REPO

MAX_FUNCTION_LINES = 60


def test_no_function_in_lw_is_longer_than_a_screen():
    long = []
    for path in sorted((REPO / "lw").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split into named steps: " + "; ".join(long)


def test_package_init_files_only_re_export():
    """Definitions live in modules named for what they do; an __init__.py holds a docstring, imports
    and __all__."""
    offenders = []
    for path in sorted((REPO / "lw").rglob("__init__.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                offenders.append(f"{path.relative_to(REPO)}: {node.name}")
    assert not offenders, offenders


# The floors of lw, top first: a module imports modules on its own floor (without a circle) or on
# floors below, never above. A package's modules share its floor. docs/architecture.md describes them.
LAYERS = (
    ("lw.__main__", "lw.cli", "lw.report", "lw.testing"),  # entry points and the tests' servers
    ("lw.pipeline",),  # one run
    ("lw.tasks",),  # one module per task
    ("lw.train",),  # the trainers, their registry, the distributed worker
    ("lw.launch",),  # the driver: starts and watches the workers it is handed
    ("lw.plan",),  # the planner: dry-run report, memory and FLOPs models, the offload decision
    ("lw.eval",),  # benchmarks, generation, judging, scoring
    ("lw.data",),  # training data: sources, checks, tokenization, packing, pairs, prompts
    ("lw.models",),  # model and tokenizer loading, chat formats
    ("lw.config", "lw.jsonl", "lw.llm", "lw.tracking"),  # the typed config, files, the API client, W&B
    ("lw.errors", "lw.words", "lw.toy_words", "lw.run_dir"),  # the bottom floor: imports nothing of lw
)


def lw_modules() -> dict:
    """Every module of lw by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted((REPO / "lw").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path, modules: dict) -> set[str]:
    """The lw modules `path` imports anywhere in it (inside functions too): `from lw.a import b` is
    lw.a.b when that is a module, else lw.a. A module of lw that does not exist stays in, by name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name == "lw" or name.startswith("lw."))
    return found


def floor_of(module: str) -> int | None:
    for floor, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return len(LAYERS) - floor  # the bottom floor is 1
    return None


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_imports_point_down_the_floors_without_circles():
    modules = lw_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items() if name != "lw"}
    # A moved module's old name (`lw.plan_eval`) would fail only when its import runs, if ever.
    missing = sorted(f"{name} imports {imported}, which does not exist" for name, imported_set in graph.items()
                     for imported in imported_set if imported not in modules)
    assert not missing, missing
    graph = {name: imported & set(modules) for name, imported in graph.items()}
    homeless = sorted(name for name in graph if floor_of(name) is None)
    upward = sorted(f"{name} (floor {floor_of(name)}) imports {imported} (floor {floor_of(imported)})"
                    for name, imported_set in graph.items() for imported in imported_set
                    if name not in homeless and imported not in homeless and floor_of(imported) > floor_of(name))
    circles = import_circles(graph)
    print(f"{len(circles)} import circle(s), {len(upward)} upward import(s), {len(homeless)} module(s) on no floor")
    for line in [f"circle: {' <-> '.join(c)}" for c in circles] + upward + [f"on no floor: {m}" for m in homeless]:
        print(line)
    assert not homeless, f"add them to a floor of LAYERS: {homeless}"
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
    assert not upward, "imports that climb a floor: " + "; ".join(upward)


# A cache folder may share a name with a run directory's entry ("tokenized" under cache_dir).
CACHE_NAMES = {"tokenized"}
PATH_CALLS = {"Path", "joinpath", "glob", "rglob", "open"}


def run_dir_names() -> set[str]:
    """The names lw/run_dir.py joins onto a run directory or keeps in a constant: the one list."""
    names = set()
    for node in ast.walk(ast.parse((REPO / "lw" / "run_dir.py").read_text(encoding="utf-8"))):
        value = node.right if isinstance(node, ast.BinOp) else node.value if isinstance(node, ast.Assign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            names.update(value.value.split("/"))
    return names - CACHE_NAMES


def run_dir_literals(tree, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of each run-directory name joined onto a path (`x / "model"`) or handed to
    Path, joinpath, glob, rglob or open as a path ("**/metrics.json"), or a file's name kept in a
    name of its own (`STATS = "stats.json"`; a bare "pairs" there is a value, not a path)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            candidates = [node.value] if "." in str(getattr(node.value, "value", "")) else []
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            candidates = [node.right]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            candidates = node.args if name in PATH_CALLS else []
        else:
            continue
        for value in candidates:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                    and names & set(value.value.split("/")):
                found.append((value.lineno, value.value))
    return found


def test_run_directory_paths_are_named_only_in_run_dir():
    names = run_dir_names()
    assert {"model", "checkpoints", "launch", "eval", "metrics.json", "results.csv"} <= names
    offenders = []
    for path in sorted((REPO / "lw").rglob("*.py")):
        if path == REPO / "lw" / "run_dir.py":
            continue
        for line, literal in run_dir_literals(ast.parse(path.read_text(encoding="utf-8")), names):
            offenders.append(f"{path.relative_to(REPO)}:{line} {literal!r}")
    print("\n".join(offenders))
    assert not offenders, "name these paths with lw/run_dir.py: " + "; ".join(offenders)


def test_the_architecture_page_draws_the_floors_of_layers():
    """docs/architecture.md's drawing of the floors follows LAYERS, floor by floor."""
    lines = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines()
    drawn = [line.split("  ")[0].split() for line in lines if line.startswith("lw.")]
    assert drawn == [list(floor) for floor in LAYERS], drawn
