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
