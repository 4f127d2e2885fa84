"""The studies behind the committed results, and the one command that runs them: ``medprune study NAME``.

A study is a module of this package whose ``main(argv)`` is decorated with :func:`study`; the decorator
records it here, so ``medprune study --help`` lists whatever modules exist (nothing to edit elsewhere).
Every study parses its options with :class:`StudyParser`, which gives them one style: ``--models``,
``--criteria``, ... take comma lists checked against the registries they name (the accepted values are
printed in ``--help``), ``--out`` is the results folder, and a bad option is a one-line error (exit 2)
through the ``medprune`` CLI like every other user error.

    @study("ece_study", outputs=("ece_study.json", "ece_study.md", "ece_study.png"))
    def main(argv: list[str]) -> dict:
        p = StudyParser("ece_study", __doc__)
        p.add_list("--ratios", default="0.3,0.5,0.7", kind=float)
        a = p.parse_args(argv)
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/results: the committed results


@dataclass(frozen=True)
class Study:
    name: str
    run: Callable[[list[str]], object]
    summary: str                 # first line of the study module's docstring
    outputs: tuple[str, ...]     # files it writes under benchmarks/results (what `git log` shows it produced)


_STUDIES: dict[str, Study] = {}


def study(name: str, *, outputs: Iterable[str] = ()) -> Callable:
    """Register ``main(argv)`` of a study module under ``name`` (decorator)."""
    if not name.isidentifier():  # it is typed on the command line and names the results
        raise ValueError(f"study name {name!r} must be an identifier such as 'ece_study'")

    def register(fn: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
        if name in _STUDIES and _STUDIES[name].run.__module__ != fn.__module__:
            warnings.warn(f"study {name!r} registered twice ({_STUDIES[name].run.__module__}, {fn.__module__})",
                          stacklevel=2)
        doc = (sys.modules[fn.__module__].__doc__ or fn.__doc__ or name).strip()
        _STUDIES[name] = Study(name, fn, doc.splitlines()[0], tuple(outputs))
        return fn
    return register


def discover() -> None:
    """Import every study module of this package (and its sub-packages) so that each registers itself."""
    import benchmarks.studies as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
        leaf = info.name.rsplit(".", 1)[-1]
        if not leaf.startswith("_") and info.name != __name__:
            importlib.import_module(info.name)


def available() -> list[str]:
    discover()
    return sorted(_STUDIES)


def get_study(name: str) -> Study:
    names = available()
    if name not in _STUDIES:
        raise ConfigError(f"unknown study {name!r}: use one of {', '.join(names)}")
    return _STUDIES[name]


def listing() -> str:
    """The text of ``medprune study --help``: usage, then one line per registered study."""
    names = available()
    width = max(map(len, names))
    lines = ["Usage: medprune study NAME [OPTIONS]   (medprune study NAME --help: its options)", "",
             "Studies (each writes its results under benchmarks/results/):"]
    lines += [f"  {n:<{width}}  {_STUDIES[n].summary}" for n in names]
    return "\n".join(lines)


def run_study(argv: list[str]) -> int:
    """``NAME [OPTIONS]`` → run that study (``--help`` or nothing: the listing); its exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return 0
    code = get_study(argv[0]).run(list(argv[1:]))
    return code if type(code) is int else 0  # studies that gate something return their exit status


def command_line(name: str, argv: list[str] | None) -> str:
    """The command that reproduces a result, recorded in its JSON/Markdown."""
    return f"medprune study {name} {shlex.join(argv or [])}".rstrip()


def comma_list(kind: Callable[[str], object] = str, choices: Iterable[str] | None = None) -> Callable:
    """An argparse ``type`` for ``a,b,c`` with each item converted by ``kind`` and checked against ``choices``."""
    allowed = None if choices is None else list(choices)

    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            bad = [s for s in items if s not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}; choose from {','.join(allowed)}")
        try:
            return [kind(s) for s in items]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


class StudyParser(argparse.ArgumentParser):
    """``argparse`` with the shared style of the studies (see the module docstring)."""

    def __init__(self, name: str | None = None, doc: str | None = None, **kwargs):
        if name is not None:  # sub-parsers (add_subparsers) arrive with their prog in kwargs
            kwargs.update(prog=f"medprune study {name}", description=doc)
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):  # one line through the medprune CLI (exit 2), not usage + traceback
        raise ConfigError(f"{self.prog}: {message}")

    def add_list(self, flag: str, *, default: str | None, choices: Iterable[str] | None = None,
                 kind: Callable[[str], object] = str, help: str = "") -> None:
        """A comma-list option; ``choices`` (read from a registry) are checked and shown in ``--help``."""
        choices = None if choices is None else list(choices)
        shown = f" (choices: {','.join(choices)})" if choices is not None else ""
        dflt = "" if default is None else f" [default: {default}]"
        self.add_argument(flag, type=comma_list(kind, choices), default=None if default is None else
                          comma_list(kind, choices)(default), help=f"{help}{shown}{dflt}".strip())

    def add_out(self, default: Path = RESULTS) -> None:
        self.add_argument("--out", type=Path, default=default, help=f"results folder [default: {default}]")
