"""Options that take a fixed set, read from the registries that define the set (never copied).

Each is a ``Literal`` type: typer lists the values in ``--help`` (``<lrp|dlb|…>``) and refuses any other
with a one-line error, so a criterion registered tomorrow appears in ``medprune prune --help`` by itself.

    criterion: Criterion = typer.Option("lrp", "--criterion", help="importance criterion")

The registries live in modules that import torch, timm, zennit or Torch-Pruning (seconds), and every
command's options are built for ``medprune --help``; so the names are read from the registries' *source*
(:func:`constant`, :func:`criterion_names`) without importing them. ``tests/toolchain/test_choices.py``
checks that each read equals what the imported registry holds.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal


def one_of(values: Iterable[str]) -> Any:
    """``Literal[v1, v2, …]`` for a CLI option; the registry must not be empty."""
    values = tuple(values)
    if not values:
        raise ValueError("a choice option needs at least one value")
    return Literal[values]  # type: ignore[valid-type]  (built from the registry at run time)


def _source_file(module: str) -> Path:
    """The .py file of ``module`` (dotted), found without importing it or its parent packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level package: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {top} not found")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node.value
    return None


def constant(module: str, name: str) -> Any:
    """The literal value of ``module``'s top-level ``name = …`` (tuple, dict, str), read from its source."""
    value = _assigned(_tree(_source_file(module)), name)
    if value is None:
        raise LookupError(f"{module} assigns no top-level {name}")
    return ast.literal_eval(value)


def _class_name(node: ast.ClassDef) -> str | None:
    value = _assigned(ast.Module(body=node.body, type_ignores=[]), "name")
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None


def _table_keys(tree: ast.Module, node: ast.For) -> list[str]:
    """``for name, row in TABLE.items(): register…(name, …)``: the string keys of the dict TABLE."""
    it = node.iter
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr == "items"
            and isinstance(it.func.value, ast.Name)):
        return []
    table = _assigned(tree, it.func.value.id)
    keys = table.keys if isinstance(table, ast.Dict) else []
    return [k.value for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]


@functools.cache
def criterion_names() -> tuple[str, ...]:
    """Every criterion ``toolchain.importance`` registers, from its modules' source: classes decorated
    with ``@register`` (their ``name``) and tables registered in a top-level loop (their keys)."""
    package = _source_file("toolchain.importance").parent
    names: set[str] = set()
    for path in sorted(package.glob("*.py")):
        if path.stem in ("__init__", "base") or path.stem.startswith("_"):
            continue  # as toolchain.importance.base._discover skips them
        tree = _tree(path)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "register"
                                                      for d in node.decorator_list):
                names.add(_class_name(node) or "")
            elif isinstance(node, ast.For):
                names.update(_table_keys(tree, node))
    names.discard("")
    return tuple(sorted(names))


Criterion = one_of(criterion_names())
Sampling = one_of(constant("toolchain.sampling", "STRATEGIES"))
Scope = one_of(constant("toolchain.masking", "SCOPES"))
Split = one_of(constant("toolchain.data.dataset", "SPLITS"))
SelectMetric = one_of(constant("toolchain.train", "SELECT_METRICS"))
Granularity = one_of(constant("toolchain.removal.remove", "GRANULARITIES"))
