"""A resumable, content-addressed stage runner (the engine behind ``medprune deploy``), and the code
versions that go into every cache key.

Each stage has a key (its inputs: config values and the digests of upstream stages) plus the version
of the code that computes it (``code_version`` of the stage function and anything it declares). The
key's hash names the stage's folder under ``<root>/stages/``; a finished stage holds ``result.json``
and is reused on the next run, so an interrupted run resumes where it stopped, and a change to the
stage's code (a criterion's module, say) runs it again instead of reusing stale results. A stage
writes into a temp folder that is renamed into place only when it succeeds (Ctrl-C leaves nothing
half-done).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .atomic import atomic_dir

# Packages of this project: an import of one of them is followed when computing a code version.
FIRST_PARTY = ("toolchain", "devices", "export", "benchmarks")


def digest(obj: Any) -> str:
    """Stable sha256 of a JSON-able object (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _module_of(obj: Any) -> tuple[str, Path]:
    """``(module name, file)`` defining ``obj``: a module, module name, class, function, method or instance."""
    if isinstance(obj, str):
        obj = importlib.import_module(obj)
    name = obj.__name__ if isinstance(obj, type(sys)) else getattr(obj, "__module__", None)
    module = sys.modules.get(name or "")
    file = getattr(module, "__file__", None)
    if not file:
        raise ValueError(f"cannot find the source file of {obj!r} (module {name!r})")
    return name, Path(file).resolve()


def _root_of(name: str, file: Path) -> Path:
    """The folder holding the top-level package of module ``name`` (one level up per dotted part)."""
    return file.parents[len(name.split(".")) - (0 if file.name == "__init__.py" else 1)]


def _locate(root: Path, name: str, leaves: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """Files an import of ``name`` executes or can reach: parent ``__init__``s, the module, and for a
    package every module in it (packages such as the criterion registry discover their modules), or
    only its ``__init__`` for a package in ``leaves``."""
    parts = name.split(".")
    found = [(".".join(parts[:i]), root.joinpath(*parts[:i], "__init__.py")) for i in range(1, len(parts))]
    path = root.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        found.append((name, path.with_suffix(".py")))
    elif name in leaves:
        found.append((name, path / "__init__.py"))
    elif (path / "__init__.py").is_file():
        found += [(name if f.name == "__init__.py" else f"{name}.{f.stem}", f) for f in sorted(path.glob("*.py"))]
    return [(n, f) for n, f in found if f.is_file()]


_PARSED: dict[tuple[Path, int, int], list[str]] = {}  # (file, mtime_ns, size) -> imports: parse each once


def _imports(name: str, file: Path) -> list[str]:
    """Module names ``file`` imports anywhere (including inside functions), relative ones resolved."""
    stat = file.stat()
    cache_key = (file, stat.st_mtime_ns, stat.st_size)
    if cache_key not in _PARSED:
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found += [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        _PARSED[cache_key] = found
    return _PARSED[cache_key]


def source_files(*objs: Any, follow_imports: bool = True, leaves: tuple[str, ...] = (),
                 skip: frozenset[Path] = frozenset()) -> list[Path]:
    """The source files ``objs`` depend on: each one's module (every module of a package) and, with
    ``follow_imports``, transitively every first-party module it imports (``FIRST_PARTY`` and the
    object's own top-level package). Following imports errs on the side of including too much: a
    superfluous file costs a rerun, a missing one a stale cache. A package named in ``leaves`` (dotted
    name) counts as its ``__init__`` and what that imports, not every module in it: for a registry
    whose one module in use the caller names itself; files in ``skip`` are neither hashed nor followed
    (``criterion_source_files``)."""
    seen: dict[Path, str] = {}
    todo: list[tuple[str, Path, Path, tuple[str, ...]]] = []
    for obj in objs:
        if isinstance(obj, Path) or (isinstance(obj, str) and obj.endswith(".py")):
            seen[Path(obj).resolve()] = ""  # a plain file: hashed, imports not followed
            continue
        name, file = _module_of(obj)
        root = _root_of(name, file)
        installed = {"site-packages", "dist-packages"} & set(file.parts)  # a library: hash its module only
        tops = FIRST_PARTY if installed else tuple({*FIRST_PARTY, name.split(".")[0]})
        todo += [(n, f, root, tops) for n, f in _locate(root, name, leaves)]
    while todo:
        name, file, root, tops = todo.pop()
        if file in seen or file in skip:
            continue
        seen[file] = name
        if follow_imports:
            for imported in _imports(name, file):
                if imported.split(".")[0] in tops:
                    todo += [(n, f, root, tops) for n, f in _locate(root, imported, leaves) if f not in seen]
    return sorted(seen)


# The criterion registry: importing it as a whole reaches every criterion module (``_locate``), so
# without care every criterion's version would hold the code of all of them.
CRITERION_REGISTRY = "toolchain.importance"


def criterion_source_files(criterion: Any, *objs: Any, leaves: tuple[str, ...] = ()) -> list[Path]:
    """The source files that compute ``criterion``'s scores (a ``Criterion`` subclass or instance), with
    those of ``objs``: its module and the first-party modules it imports (``base``, shared helpers such
    as ``_hooks``), the registry's ``__init__`` but not every module in it, and another registered
    criterion's module only where a module of the registry package that it uses imports it by name
    (``dlb`` importing from ``lrp``, say), so an edit to one criterion leaves the others' versions alone.
    Criteria reached only through other packages (``toolchain.fidelity`` draws heatmaps with LRP, and
    ``toolchain.models`` imports it) are left out with the helpers only they import: if ``objs`` compute
    with another criterion, pass its class in ``objs`` too. ``leaves``: more registry packages whose
    modules count only where imported by name (``source_files``)."""
    from .importance import Criterion, registered

    cls = criterion if isinstance(criterion, type) else type(criterion)
    if not issubclass(cls, Criterion):
        raise TypeError(f"expected a Criterion subclass or instance, got {criterion!r}")
    named = [cls] + [o if isinstance(o, type) else type(o) for o in objs
                     if isinstance(o, Criterion) or (isinstance(o, type) and issubclass(o, Criterion))]
    skip = {_module_of(c)[1] for c in registered().values()} - {_module_of(c)[1] for c in named}
    while wanted := skip & _imported_by_registry(source_files(*named, leaves=(CRITERION_REGISTRY,),
                                                              skip=frozenset(skip))):
        skip -= wanted  # a criterion module imported by one the criterion uses: part of its code
    return source_files(cls, *objs, leaves=(CRITERION_REGISTRY, *leaves), skip=frozenset(skip))


def _imported_by_registry(files: Iterable[Path]) -> set[Path]:
    """Files that the registry package's modules among ``files`` import by name."""
    name, init = _module_of(CRITERION_REGISTRY)
    root, found = _root_of(name, init), set()
    for file in files:
        if file.parent == init.parent:
            module = name if file.name == "__init__.py" else f"{name}.{file.stem}"
            found |= {f for imported in _imports(module, file)
                      for _, f in _locate(root, imported, (CRITERION_REGISTRY,))}
    return found


def code_version(*objs: Any, follow_imports: bool = True) -> str:
    """sha256 of the source files ``objs`` depend on (``source_files``), for cache keys.

    Files are named relative to their package root, so the version is the same in every clone.
    """
    files = source_files(*objs, follow_imports=follow_imports)
    h = hashlib.sha256()
    for file in files:
        rel = next((file.relative_to(file.parents[i]) for i in range(len(file.parents))
                    if not (file.parents[i] / "__init__.py").is_file()), file)
        h.update(str(rel).encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class StageResult:
    name: str
    key_digest: str
    path: Path  # the stage's folder (files it wrote live here)
    data: dict  # what the stage returned (JSON-able)
    cached: bool
    seconds: float


@dataclass
class Pipeline:
    root: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    results: dict[str, StageResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def stage(self, name: str, key: dict, fn: Callable[[Path], dict], *, code: Iterable[Any] = ()) -> StageResult:
        """Run ``fn(workdir) -> dict`` unless a finished stage with the same key and code exists.

        The code version covers ``fn``'s module and its first-party imports, plus ``code`` (modules,
        classes or objects the stage depends on beyond those, e.g. the criterion it runs).
        """
        full = self.full_key(name, key, fn, code)
        key_digest = digest(full)
        folder = self._folder(name, key_digest)
        index = len(self.results) + 1
        if (folder / "result.json").is_file():
            data = json.loads((folder / "result.json").read_text())
            result = StageResult(name, key_digest, folder, data, True, 0.0)
            self.console.print(f"[dim][{index}] {name}: cached ({folder.name})[/]")
        else:
            self.console.print(f"[bold][{index}] {name}[/] …")
            t0 = time.perf_counter()
            with atomic_dir(folder) as tmp:
                data = fn(tmp) or {}
                _write_stage(tmp, full, data)
            seconds = time.perf_counter() - t0
            result = StageResult(name, key_digest, folder, data, False, seconds)
            self.console.print(f"[green][{index}] {name}: done in {seconds:.1f} s[/]")
        self.results[name] = result
        return result

    def lookup(self, name: str, full_key: dict) -> StageResult | None:
        """The finished stage ``name`` with ``full_key`` (from :meth:`full_key`), or None; runs nothing."""
        key_digest = digest(full_key)
        folder = self._folder(name, key_digest)
        if not (folder / "result.json").is_file():
            return None
        return StageResult(name, key_digest, folder, json.loads((folder / "result.json").read_text()), True, 0.0)

    def publish(self, name: str, full_key: dict, data: dict,
                write: Callable[[Path], None] | None = None) -> StageResult:
        """Store ``data`` computed elsewhere (e.g. by a Ray worker that writes no files) where and as
        :meth:`stage` would have. ``full_key`` is :meth:`full_key` taken when the work was dispatched, so
        the result is filed under the code that computed it; ``write(folder)`` adds files."""
        key_digest = digest(full_key)
        folder = self._folder(name, key_digest)
        with atomic_dir(folder) as tmp:
            if write is not None:
                write(tmp)
            _write_stage(tmp, full_key, data)
        return StageResult(name, key_digest, folder, data, False, 0.0)

    @staticmethod
    def full_key(name: str, key: dict, fn: Callable, code: Iterable[Any] = ()) -> dict:
        """What a stage's digest covers: its name, its key and the version of its code."""
        return {"stage": name, **key, "code_version": code_version(fn, *code)}

    def folder(self, name: str, key: dict, fn: Callable, code: Iterable[Any] = ()) -> Path:
        """Where the stage ``name`` with ``key`` run by ``fn`` lives (the one home of the folder rule)."""
        return self._folder(name, digest(self.full_key(name, key, fn, code)))

    def _folder(self, name: str, key_digest: str) -> Path:
        return Path(self.root) / "stages" / f"{name}-{key_digest[:16]}"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict:
        return {
            "total_seconds": round(self.elapsed(), 1),
            "stages": {n: {"cached": r.cached, "seconds": round(r.seconds, 1), "digest": r.key_digest[:16]}
                       for n, r in self.results.items()},
        }


def _write_stage(folder: Path, full_key: dict, data: dict) -> None:
    """``key.json`` (what the digest covers) and ``result.json`` (the completion marker, written last)."""
    (folder / "key.json").write_text(json.dumps(full_key, indent=2, sort_keys=True, default=str))
    (folder / "result.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
