"""The ``medprune`` command.

Commands of the toolchain live in ``toolchain/commands/<name>.py``, each exposing ``register(app)``.
Later stages (export, benchmarks, devices) add theirs through the ``medprune.commands`` entry-point
group, so this module never imports them. User errors print one line and exit non-zero.
"""

from __future__ import annotations

import errno
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

BUILTIN = ("train", "evaluate", "info", "prune", "import_model", "predict")


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
    except Exception as exc:
        fixable = user_fixable_os_error(exc)
        if fixable:  # a read-only, full or misplaced output is the user's to fix: exit 2, one line
            _fail(fixable, 2)
        if os.environ.get("MEDPRUNE_DEBUG"):  # an internal bug, not user input: still one line unless asked
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set MEDPRUNE_DEBUG=1 for a traceback)", 1)


# errno values an output path causes, with what the user can do about them; any other OSError is a bug
_FIXABLE_ERRNO = {
    errno.EROFS: "choose a writable path (--out, --json, MEDPRUNE_CACHE)",
    errno.EACCES: "check its permissions or choose another path (--out, --json, MEDPRUNE_CACHE)",
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space and run again",
    errno.EEXIST: "a file is in the way; remove it or choose another path",
    errno.ENOTDIR: "a file stands where a folder is expected; remove it or choose another path",
    errno.EISDIR: "a folder stands where a file is expected; choose a file name",
}


def user_fixable_os_error(exc: BaseException) -> str | None:
    """One line for an OSError of :data:`_FIXABLE_ERRNO` anywhere in ``exc``'s cause chain, or a library
    message carrying its text (safetensors/onnx report "No space left on device" as their own errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FIXABLE_ERRNO:
            where = f"{exc.filename}: " if exc.filename else ""
            return f"{where}{exc.strerror or os.strerror(exc.errno)}; {_FIXABLE_ERRNO[exc.errno]}"
        for code in (errno.ENOSPC, errno.EROFS):
            if os.strerror(code) in str(exc):
                return f"{os.strerror(code)}; {_FIXABLE_ERRNO[code]}"
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
