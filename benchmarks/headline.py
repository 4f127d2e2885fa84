"""The README's results table, generated from ``benchmarks/results/headline.json`` (its one source).

    python -m benchmarks.headline            # rewrite the table between the README markers
    python -m benchmarks.headline --check    # exit 1 when README, headline.json and the results disagree

Each key of headline.json is a figure: ``{"value": number|string, "unit": str, "source": results file,
"command": the command that writes that file}``, plus optional fields:

* ``path`` (``"runs/*/test/accuracy"``), ``where`` (``{"key": "vgg19:pneumoniamnist"}``, filters the
  ``*`` levels; dotted fields reach nested ones) and ``reduce`` (``max``/``min``/``mean``): where the value sits in a JSON source. With a
  ``path`` the check requires the value to equal what the source holds there; without one, the value
  must be text found verbatim in the source (a finding a report states). Nothing is typed in by hand.
* ``n`` (the count behind the figure) and ``ci`` (``[lo, hi]``, 95 %) with how to recompute it:
  ``ci_method`` ``clopper-pearson`` (from value and ``n``), ``hanley-mcneil`` (an AUC, from
  ``n_pos``/``n_neg``) or ``ci_path`` (where the source stores it). The check recomputes it.
* ``label`` (what the figure is, for the table) and ``note``.

Keys are ``group/...``: the table groups rows by the first segment, in first-seen order of the file
(e.g. ``baseline/``, ``protocol/``, ``cost/``, ``repro/``). Format: DEVELOPERS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ROOT / "benchmarks" / "results" / "headline.json"
README = ROOT / "README.md"
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
REQUIRED = ("value", "unit", "source", "command")
REDUCERS = {"max": max, "min": min, "mean": lambda xs: sum(xs) / len(xs)}


class HeadlineError(ValueError):
    """headline.json is malformed or disagrees with a results file or the README."""


def load(path: Path = HEADLINE) -> dict[str, dict]:
    """The entries of ``path``, checked for the required fields and types."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadlineError(f"cannot read {path}: {exc}") from exc
    if not isinstance(entries, dict):
        raise HeadlineError(f"{path} must hold one JSON object of keys")
    for key, entry in entries.items():
        missing = [f for f in REQUIRED if f not in entry] if isinstance(entry, dict) else list(REQUIRED)
        if missing or "/" not in key:
            raise HeadlineError(f"{key}: needs a 'group/...' key and the fields {', '.join(missing or REQUIRED)}")
        if not isinstance(entry["value"], (int, float, str)) or isinstance(entry["value"], bool):
            raise HeadlineError(f"{key}: value must be a number or a string")
        if entry.get("reduce") and entry["reduce"] not in REDUCERS:
            raise HeadlineError(f"{key}: reduce must be one of {', '.join(REDUCERS)}")
    return entries


def _field(item: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(item, dict) or part not in item:
            return False, None
        item = item[part]
    return True, item


def _matches(item: Any, where: dict) -> bool:
    """An item matches when it has at least one ``where`` field and every field it has is equal
    (so one ``where`` can filter several ``*`` levels: ``{"label": "vgg19-dense", "backend": "openvino"}``)."""
    if not where:
        return True
    found = [(has, value == want) for has, value, want in ((*_field(item, k), w) for k, w in where.items())]
    return any(has for has, _ in found) and all(ok for has, ok in found if has)


def lookup(doc: Any, path: str, where: dict | None = None, reduce: str | None = None) -> Any:
    """The value at ``path`` in ``doc`` (``*`` walks a list or dict, filtered by ``where``)."""
    values = [doc]
    for part in path.split("/"):
        nxt = []
        for v in values:
            if part == "*":
                items = v.values() if isinstance(v, dict) else v
                nxt += [x for x in items if _matches(x, where or {})]
            elif isinstance(v, dict) and part in v:
                nxt.append(v[part])
            elif isinstance(v, list) and part.isdigit() and int(part) < len(v):
                nxt.append(v[int(part)])
        values = nxt
    if not values:
        raise HeadlineError(f"nothing at {path} (where {where})")
    if reduce:
        return REDUCERS[reduce](values)
    if len(values) != 1:
        raise HeadlineError(f"{path} (where {where}) matches {len(values)} values: add a where or a reduce")
    return values[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


def check_entry(key: str, entry: dict, root: Path = ROOT) -> list[str]:
    """Problems of one entry against its source file (empty when it agrees)."""
    source = root / entry["source"]
    if not source.is_file():
        return [f"{key}: source {entry['source']} does not exist"]
    problems = []
    text = source.read_text()
    if entry.get("path"):
        try:
            found = lookup(json.loads(text), entry["path"], entry.get("where"), entry.get("reduce"))
        except (HeadlineError, json.JSONDecodeError) as exc:
            return [f"{key}: {exc}"]
        if not _same(found, entry["value"]):
            problems.append(f"{key}: value {entry['value']!r} but {entry['source']} holds {found!r}")
    elif not isinstance(entry["value"], str) or not any(entry["value"] in t for t in _texts(source, text)):
        problems.append(f"{key}: without a path the value must be text found verbatim in {entry['source']}")
    if entry.get("ci") is not None:
        problems += _check_ci(key, entry, source, text)
    return problems


def _check_ci(key: str, entry: dict, source: Path, text: str) -> list[str]:
    """The interval must be recomputable: exact binomial from ``n``, Hanley-McNeil from ``n_pos``/``n_neg``,
    or read from the source at ``ci_path``."""
    from toolchain.intervals import clopper_pearson, hanley_mcneil

    ci, method, value = entry["ci"], entry.get("ci_method"), entry["value"]
    try:
        if entry.get("ci_path"):
            expected = lookup(json.loads(text), entry["ci_path"], entry.get("where"))
        elif method == "clopper-pearson":
            expected = clopper_pearson(round(value * entry["n"]), entry["n"])
        elif method == "hanley-mcneil":
            expected = hanley_mcneil(value, entry["n_pos"], entry["n_neg"])
        else:
            return [f"{key}: a ci needs ci_path, or ci_method clopper-pearson (with n) or hanley-mcneil "
                    "(with n_pos, n_neg)"]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"{key}: cannot recompute its ci ({exc})"]
    if len(ci) != 2 or len(expected) != 2 or not all(
            math.isclose(a, b, abs_tol=1e-9) for a, b in zip(ci, expected, strict=True)):
        return [f"{key}: ci {ci} but its {method or 'ci_path'} interval is {list(expected)}"]
    return []


# units shown as a bare number with three decimals; "fraction" is shown in percent, "×" as a suffix
THREE_DECIMALS = ("proportion", "AUC", "ECE")


def format_value(value: Any, unit: str) -> str:
    if isinstance(value, str):
        return value
    if unit in THREE_DECIMALS:
        return f"{value:.3f}"
    if unit == "fraction":
        return f"{100 * value:.0f} %"
    if unit == "×":
        return f"{value:.2f}×"
    text = f"{value:.1e}" if value and abs(value) < 1e-3 else str(value) if isinstance(value, int) else f"{value:.3g}"
    return f"{text} {unit}".strip() if unit not in ("", "text") else text


def _texts(source: Path, text: str) -> list[str]:
    """Where a verbatim value may sit: a JSON file's decoded strings (escapes undone), else its text."""
    if source.suffix != ".json":
        return [text]
    try:
        return _strings(json.loads(text))
    except json.JSONDecodeError:
        return [text]


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    items = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else []
    return [s for item in items for s in _strings(item)]


def render(entries: dict[str, dict]) -> str:
    """The markdown table: one row per key, grouped by the key's first segment."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for key, entry in entries.items():
        group, _, rest = key.partition("/")
        groups.setdefault(group, []).append((rest, entry))
    lines = ["| group | figure | value | 95 % CI | n | source |", "|---|---|---:|---|---:|---|"]
    for group, rows in groups.items():
        for i, (rest, e) in enumerate(rows):
            ci = e.get("ci")
            lines.append("| " + " | ".join([
                f"**{group}**" if i == 0 else "", (e.get("label") or rest).replace("|", "\\|"),
                format_value(e["value"], e["unit"]).replace("|", "\\|"),
                f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "", str(e["n"]) if e.get("n") else "",
                f"`{Path(e['source']).name}`"]) + " |")
    return "\n".join(lines) + "\n"


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the headline markers replaced by ``table``."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise HeadlineError(f"README must hold one {START} … {END} block")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}{END}{tail}"


def problems(headline: Path = HEADLINE, readme: Path = README, root: Path = ROOT) -> list[str]:
    """Everything that disagrees: entries vs their sources, README vs headline.json."""
    entries = load(headline)
    found = [p for key, entry in entries.items() for p in check_entry(key, entry, root)]
    text = readme.read_text()
    if with_table(text, render(entries)) != text:
        found.append(f"{readme.name} results table differs from {headline.name}: run python -m benchmarks.headline")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.headline", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on any disagreement")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = problems()
            for p in found:
                print(p, file=sys.stderr)
            return 1 if found else 0
        entries = load()
        bad = [p for key, entry in entries.items() for p in check_entry(key, entry)]
        if bad:
            print("\n".join(bad), file=sys.stderr)
            return 1
        from toolchain.atomic import atomic_file

        text = with_table(README.read_text(), render(entries))
        with atomic_file(README, "w") as fh:
            fh.write(text)
        print(f"{README.name}: results table rewritten from {len(entries)} keys of {HEADLINE.name}")
        return 0
    except HeadlineError as exc:
        print(f"headline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
