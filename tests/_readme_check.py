"""The checker behind ``tests/test_readme_commands.py``: every command README.md shows works as written,
parsed by the parser that would run it, never run.

Commands are taken from the README's code blocks (whole lines, ``\\`` continuations joined) and inline code
spans that start with ``medprune``, ``.venv/bin/medprune``, ``make`` or ``python -m benchmarks…/toolchain…``:

- ``medprune SUB …``: the click command the console script builds (``toolchain.cli.build_app``, so the
  entry-point commands of export/benchmarks/devices too) parses the tokens without invoking anything;
  ``medprune study NAME …`` and ``python -m MODULE …``: the study's / module's own argparse parser, stopped
  right after it parsed (a patched ``parse_args`` raises before the study does any work);
- ``make TARGET VAR=…``: ``make -n`` (prints recipes, runs none) must know the target, each ``VAR`` must be
  read by the Makefile, and the medprune commands the recipe prints are checked as above;
- markdown links to repo files and repo paths the text names (``benchmarks/results/x.{json,md}``) exist, and
  inline ``package.module.NAME`` spans (``…func(a, b)``: with those parameters) name real objects.

Placeholders (``<run>``, ``PATH``, ``$VAR``, ``x.json|x.csv``) stand for a value: they are replaced by the
option's first choice, or ``1``. Inline spans and commands with an elision (``…``) are fragments that show a
flag, so a required option they leave out is not an error; a code-block command must be complete.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import typing
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from unittest import mock

try:  # typer >= 0.20 vendors its own click (as toolchain/cli.py imports it)
    from typer._click.exceptions import MissingParameter, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import MissingParameter, UsageError

from toolchain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

MEDPRUNE = re.compile(r"(?:\.venv/bin/)?medprune(?=\s|$)")
PYTHON_M = re.compile(r"(?:\.venv/bin/)?python3? -m (?:benchmarks|toolchain)\b")
MAKE = re.compile(r"make(?=\s|$)")
ELISIONS = {"…", "..."}
PLACEHOLDER = re.compile(r"<[^<>\s]+>|\$\{?\w+\}?|[A-Z][A-Z0-9_]*(?:\.\.\.)?|\S*\|\S*")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=\S*")
# repo paths named in the text: a top-level package folder, then path characters (braces and globs kept)
REPO_PATH = re.compile(r"(?<![\w./$-])(?:toolchain|export|benchmarks|devices|tests)/[\w./{},*-]*[\w/*}]")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# Results the README names while saying they are not committed (the reason is the README's own words)
NOT_COMMITTED = {
    "benchmarks/results/importance.{json,md,png}": "'not committed: the last run covered two cells'",
    "benchmarks/results/predict_minimal.{json,md}": "'it was removed until rerun'",
    "benchmarks/results/tensorrt.*": "written by make tensorrt-check on an NVIDIA GPU",
}


@dataclass(frozen=True)
class Command:
    text: str
    line: int        # README line where it starts
    fragment: bool   # inline span or elided: may leave required options out

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def _split_fences(markdown: str) -> tuple[str, list[tuple[int, str]]]:
    """``(prose, code)``: the text with fenced lines blanked (line numbers kept), and the fenced lines."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            code.append((number, line))
        prose.append("" if fenced or line.lstrip().startswith("```") else line)
    return "\n".join(prose), code


def _spans(prose: str) -> typing.Iterator[tuple[int, str]]:
    """Inline code spans of ``prose`` (one line break allowed inside, whitespace collapsed) and their line."""
    for m in re.finditer(r"`([^`]+)`", prose):
        if "\n\n" not in m.group(1):
            yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())


def extract(markdown: str) -> list[Command]:
    """The commands of ``markdown``: code-block lines (continuations joined) and inline code spans."""
    found, pending = [], None
    prose, code = _split_fences(markdown)
    for number, line in code:
        text = line.strip().removeprefix("$ ")
        if pending:
            text = f"{pending[0]} {text}"
        if text.endswith("\\"):
            pending = (text[:-1].rstrip(), pending[1] if pending else number)
            continue
        start, pending = (pending[1] if pending else number), None
        if _is_command(text):
            found.append(Command(text, start, fragment=_elided(text)))
    found += [Command(text, line, fragment=True) for line, text in _spans(prose) if _is_command(text)]
    return found


def _is_command(text: str) -> bool:
    return any(p.match(text) for p in (MEDPRUNE, PYTHON_M, MAKE))


def _elided(text: str) -> bool:
    try:
        return any(e in shlex.split(text, comments=True) for e in ELISIONS)
    except ValueError:
        return False  # check() reports the unsplittable text


def _tokens(text: str) -> list[str]:
    return [t for t in shlex.split(text, comments=True) if t not in ELISIONS]


def check(cmd: Command, data_dir: Path) -> str | None:
    """Why ``cmd`` would not work as written, or None."""
    try:
        tokens = _tokens(cmd.text)
    except ValueError as exc:
        return f"cannot be split into words: {exc}"
    if MEDPRUNE.match(cmd.text):
        return check_medprune(tokens[1:], cmd.fragment)
    if PYTHON_M.match(cmd.text):
        return check_python_m(tokens[2:], cmd.fragment)
    return check_make(tokens[1:], data_dir)


# ---------------------------------------------------------------- medprune and the studies

@functools.cache
def _cli():
    import typer

    from toolchain.cli import build_app

    return typer.main.get_command(build_app())


def _dummy(choices: typing.Sequence[str] | None) -> str:
    return str(choices[0]) if choices else "1"


def _fill(tokens: list[str], choices_of: typing.Callable[[str], typing.Sequence[str] | None]) -> list[str]:
    """Placeholders replaced by the first choice of the option they follow, or by ``1``."""
    out = []
    for i, tok in enumerate(tokens):
        flag = tokens[i - 1] if i and tokens[i - 1].startswith("-") else None
        out.append(_dummy(choices_of(flag) if flag else None) if PLACEHOLDER.fullmatch(tok) else tok)
    return out


def _click_choices(command, flag: str) -> typing.Sequence[str] | None:
    """The values a choice option accepts: a typer ``Literal`` annotation (maybe Optional) or a click Choice."""
    for param in command.params:
        if flag in (*param.opts, *param.secondary_opts):
            descriptor = getattr(param, "type_descriptor", None)
            kinds = [getattr(descriptor, "annotation", None)]
            kinds += typing.get_args(kinds[0]) if typing.get_origin(kinds[0]) is typing.Union else []
            for kind in kinds:
                if typing.get_origin(kind) is typing.Literal:
                    return typing.get_args(kind)
            return getattr(getattr(param, "type", None), "choices", None)
    return None


def check_medprune(tokens: list[str], fragment: bool) -> str | None:
    if not tokens:
        return None  # `medprune` alone prints its help (no_args_is_help)
    group = _cli()
    ctx = group.make_context("medprune", tokens[:1])
    sub = group.get_command(ctx, tokens[0])
    if sub is None:
        return f"unknown subcommand {tokens[0]!r} (medprune has {', '.join(group.list_commands(ctx))})"
    if tokens[0] == "study":
        return check_study(tokens[1:], fragment)
    if {"--help", "-h"} & set(tokens):  # help is always accepted; parsing it would print it
        return None
    args = _fill(tokens[1:], functools.partial(_click_choices, sub))
    try:
        sub.make_context(tokens[0], args, parent=ctx)
    except MissingParameter as exc:
        return None if fragment else exc.format_message()
    except UsageError as exc:
        return exc.format_message()
    return None


class _Parsed(BaseException):
    """Raised by the patched ``parse_args`` once the options parsed: the study stops before any work (a
    BaseException, so a study's ``except Exception`` cannot swallow it and go on to run)."""


@contextlib.contextmanager
def _parse_only():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        def choices_of(flag):
            action = self._option_string_actions.get(flag)
            return None if action is None or action.choices is None else list(action.choices)
        original(self, _fill(list(args or []), choices_of), namespace)
        raise _Parsed

    stderr = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args), contextlib.redirect_stderr(stderr):
        yield stderr


def _parse_with(main: typing.Callable[[list[str]], object], args: list[str], fragment: bool) -> str | None:
    with _parse_only() as stderr:
        try:
            main(args)
            return "returned without parsing its options with argparse (so this check cannot see them)"
        except _Parsed:
            return None
        except ConfigError as exc:  # StudyParser.error: one line
            message = str(exc).splitlines()[0]
        except SystemExit as exc:  # a plain argparse parser: usage + error on stderr
            message = (stderr.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
    if fragment and "arguments are required" in message:
        return None
    return message


def check_study(tokens: list[str], fragment: bool) -> str | None:
    from benchmarks.studies.registry import available, get_study

    if not tokens or tokens[0] in ("--help", "-h") or PLACEHOLDER.fullmatch(tokens[0]):
        return None  # `medprune study`, `medprune study NAME`: the listing / any study
    if tokens[0] not in available():
        return f"unknown study {tokens[0]!r}"
    if {"--help", "-h"} & set(tokens):
        return None
    problem = _parse_with(get_study(tokens[0]).run, tokens[1:], fragment)
    return f"study {tokens[0]}: {problem}" if problem else None


def check_python_m(tokens: list[str], fragment: bool) -> str | None:
    module, args = tokens[0], tokens[1:]
    if module == "toolchain.cli":
        return check_medprune(args, fragment)
    if module == "benchmarks.studies":
        return check_study(args, fragment)
    if importlib.util.find_spec(module) is None:
        return f"no module {module}"
    main = getattr(importlib.import_module(module), "main", None)
    if not callable(main):
        return f"{module} has no main(argv) whose options could be checked"
    return _parse_with(main, args, fragment)


# ---------------------------------------------------------------- make

def check_make(tokens: list[str], data_dir: Path) -> str | None:
    makefile = MAKEFILE.read_text()
    unread = [t.split("=", 1)[0] for t in tokens if "=" in t
              if not re.search(rf"\$[({{]{re.escape(t.split('=', 1)[0])}[)}}]", makefile)]
    if unread:
        return f"the Makefile never reads {', '.join(unread)}"
    env = {"PATH": os.environ.get("PATH", ""), "MEDPRUNE_DATA": str(data_dir), "LC_ALL": "C"}
    run = subprocess.run(["make", "-n", "-f", str(MAKEFILE), *tokens], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    if run.returncode:
        return (run.stderr.strip().splitlines() or [f"make -n exited {run.returncode}"])[-1]
    recipe = run.stdout.replace("\\\n", " ")
    for line in recipe.splitlines():
        words = line.split()
        while words and ENV_ASSIGNMENT.fullmatch(words[0]):
            words.pop(0)
        text = " ".join(words)
        if MEDPRUNE.match(text) or PYTHON_M.match(text):
            problem = check(Command(text, 0, fragment=False), data_dir)
            if problem:
                return f"its recipe runs `{text}`: {problem}"
    return None


# ---------------------------------------------------------------- paths

def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[:m.start()] + alt + path[m.end():])]


def missing_paths(markdown: str, root: Path, not_committed: typing.Mapping[str, str] = NOT_COMMITTED) -> list[str]:
    """Repo files the text links to or names that do not exist (glob patterns: none matches)."""
    named = [(m.group(1).split("#")[0], "link") for m in LINK.finditer(markdown)
             if not re.match(r"[a-z]+:|#", m.group(1))]
    named += [(m.group(0), "named") for m in REPO_PATH.finditer(markdown) if m.group(0) not in not_committed]
    missing = []
    for path, how in dict.fromkeys(named):
        if not all(glob(str(root / p)) for p in _expand(path)):
            line = markdown.count("\n", 0, markdown.find(path)) + 1
            missing.append(f"line {line}: {how} {path} does not exist")
    return missing


DOTTED = re.compile(r"((?:toolchain|export|benchmarks|devices)(?:\.\w+)+)(?:\((.*)\))?")


def _resolve(dotted: str):
    """The object ``a.b.c`` names (the longest importable module prefix, then attributes); LookupError if
    the name does not exist. A missing third-party dependency is not hidden: its ImportError propagates."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not module.startswith(exc.name or "\0"):
                raise
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:cut])} has no {attr}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no package {parts[0]}")


def missing_names(markdown: str) -> list[str]:
    """Inline ``package.module.NAME`` (or ``…func(a, b=…)``) spans whose name or parameters do not exist."""
    import inspect

    missing = []
    for line, text in _spans(_split_fences(markdown)[0]):
        ref = DOTTED.fullmatch(text)
        if not ref:
            continue
        try:
            obj = _resolve(ref.group(1))
        except LookupError:
            missing.append(f"line {line}: {ref.group(1)} does not exist")
            continue
        if ref.group(2) is None:
            continue
        params = inspect.signature(obj).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        named = [a.split("=")[0].strip() for a in ref.group(2).split(",") if a.strip().isidentifier() or "=" in a]
        missing += [f"line {line}: {ref.group(1)} has no parameter {n!r}" for n in named if n not in params]
    return missing


def problems(markdown: str, data_dir: Path) -> list[str]:
    """One line per command of ``markdown`` that would not work as written."""
    return [f"{cmd} -> {problem}" for cmd in extract(markdown) if (problem := check(cmd, data_dir))]
