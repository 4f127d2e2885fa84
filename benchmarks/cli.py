"""Commands contributed by `benchmarks` (registered through the medprune.commands entry point):
``medprune study NAME [OPTIONS]`` runs one of the studies in ``benchmarks/studies`` (its registry)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    # The study's own parser reads the options (and --help): each study has different ones, in one style.
    @app.command("study", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def study_cmd(ctx: typer.Context, name: str = typer.Argument(None, metavar="NAME")) -> None:
        """Run a study that writes committed results (`medprune study --help` lists them)."""
        from .studies.registry import run_study

        code = run_study([name, *ctx.args] if name else list(ctx.args))
        if code:
            raise typer.Exit(code)
