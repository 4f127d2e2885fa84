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

try:  # typer >= 0.20 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

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
    @app.callback()
    def _root() -> None:
        """Attribution-guided pruning of medical image classifiers for bedside devices."""

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
        args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
        command = typer.main.get_command(build_app())
        code = command.main(args=args, prog_name="medprune", standalone_mode=False)
        if code == 130:  # typer swallows Ctrl-C and returns 130 silently
            _fail("interrupted; no partial artifacts were kept", 130)
        raise SystemExit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        _fail("interrupted; no partial artifacts were kept", 130)
    except ClickException as exc:  # bad flags, missing arguments: one line, like every user error
        _fail(exc.format_message().replace("\n", " "), exc.exit_code)
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
