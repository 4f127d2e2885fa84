"""The ``medprune`` command.

Commands of the toolchain live in ``toolchain/commands/<name>.py``, each exposing ``register(app)``.
Later stages (export, benchmarks, devices) add theirs through the ``medprune.commands`` entry-point
group, so this module never imports them. User errors print one line and exit non-zero.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

import typer

from .errors import MedpruneError

BUILTIN = ("train", "evaluate", "info", "prune")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="medprune",
        help="Attribution-guided pruning of medical image classifiers for bedside devices.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in BUILTIN:
        module = importlib.import_module(f"toolchain.commands.{name}")
        module.register(app)
    for ep in sorted(entry_points(group="medprune.commands"), key=lambda e: e.name):
        ep.load()(app)
    return app


def _fail(message: str, code: int) -> None:
    print(f"medprune: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning expected failures into one-line errors."""
    try:
        app = build_app()
        app(args=argv, standalone_mode=True)
    except MedpruneError as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; no partial artifacts were kept", 130)
    except SystemExit:
        raise
    except Exception as exc:  # an internal bug, not user input: still one line unless asked
        if os.environ.get("MEDPRUNE_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set MEDPRUNE_DEBUG=1 for a traceback)", 1)


if __name__ == "__main__":
    main()
