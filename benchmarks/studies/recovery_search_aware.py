"""Post hoc: the search-aware lossless rule on the selection-split design's pools (issue 15, stop 18's question).

    medprune study recovery_search_aware [--pair pneumoniamnist:vgg19 ...] [--arm both|design|long]
        [--design recovery_selection.json] [--long recovery_selection_long.json]

Reads the committed ``recovery_selection{,_long}.json`` and the recovery study's cached val probabilities (never
test) and writes ``recovery_search_aware.{json,md}``: per dataset x model, what the search-aware rule
(``toolchain.lossless.SEARCH_AWARE_RULE``, Bonferroni over the pool's k candidates) would choose on val, beside the
pre-registered choice (``_selection_search_aware``). Post hoc: the test result of the pre-registered rule was known;
the chosen model's test figures are the committed report's, and no headline key changes. The same section is put
under the selection reports when they are next assembled (``_selection_report.search_aware_lines``).
The bootstrap at 1 - 0.05/k draws k x 2000 replicates per candidate: a pool of 49 on 1466 val images is minutes of
one core (PneumoniaMNIST VGG19's pooled pool: ~3 CPU-minutes), so ``--pair`` and ``--arm`` restrict the run (the
report names what it covers).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .registry import RESULTS, StudyParser, command_line, study


@study("recovery_search_aware", outputs=("recovery_search_aware.json", "recovery_search_aware.md"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.atomic import atomic_file

    from . import _selection_search_aware as sa

    p = StudyParser("recovery_search_aware", __doc__)
    p.add_argument("--design", type=Path, default=RESULTS / "recovery_selection.json",
                   help="the 2-epoch arm's committed results")
    p.add_argument("--long", type=Path, default=RESULTS / "recovery_selection_long.json",
                   help="the long-recovery arm's committed results (its pools are pooled with the 2-epoch arm's)")
    p.add_argument("--pair", action="append", default=[], help="dataset:model to judge (repeatable; default: all)")
    p.add_argument("--arm", choices=("both", "design", "long"), default="both",
                   help="design: the 2-epoch arm's pools; long: the pools pooled over both arms")
    p.add_out()
    args = p.parse_args(argv)
    for path in (args.design, args.long):
        if not path.is_file():
            p.error(f"{path} not found (assemble `medprune study recovery_selection` first)")
    design, long = json.loads(args.design.read_text()), json.loads(args.long.read_text())
    unknown = sorted(set(args.pair) - set(design["models"]) - set(long["models"]))
    if unknown:
        p.error(f"--pair {', '.join(unknown)}: not in the reports (they have {', '.join(design['models'])})")
    started = time.perf_counter()
    parts = {}
    if args.arm in ("both", "design"):
        parts["2-epoch arm (recovery_selection.md)"] = sa.post_hoc(_only(design, args.pair))
    if args.arm in ("both", "long"):
        parts["pooled over both arms (recovery_selection_long.md)"] = sa.post_hoc(_only(long, args.pair), design)
    doc = {"command": command_line("recovery_search_aware", argv), "status": sa.POST_HOC,
           "sources": [args.design.name, args.long.name], "pairs": args.pair or "all", "arm": args.arm,
           "parts": parts, "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "recovery_search_aware.json", "w") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
    lines = ["# Search-aware lossless rule on the selection-split pools (post hoc)", "",
             f"`{doc['command']}` — {sa.POST_HOC}. The pre-registered rule and every headline stay as "
             "recovery_selection.md / recovery_selection_long.md state them. Covers: "
             f"{', '.join(args.pair) or 'every pair'}, {args.arm} ({doc['seconds']} s wall-clock, one thread).", ""]
    for part, records in parts.items():
        lines += sa.markdown(records, title=f"## {part}:")
    with atomic_file(out / "recovery_search_aware.md", "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {out / 'recovery_search_aware.json'} ({doc['seconds']} s)")
    return 0


def _only(doc: dict, pairs: list[str]) -> dict:
    """``doc`` with only the dataset x model sections named in ``pairs`` (all when empty)."""
    return doc if not pairs else {**doc, "models": {k: v for k, v in doc["models"].items() if k in pairs}}
