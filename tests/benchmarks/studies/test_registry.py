"""The study registry and ``medprune study``: every study module is reachable, options share one style."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import typer
from typer.testing import CliRunner

import benchmarks.studies as studies_pkg
from benchmarks.cli import register
from benchmarks.studies.registry import StudyParser, available, get_study, run_study
from toolchain.errors import ConfigError


def test_every_module_with_a_main_is_a_registered_study():
    registered = {get_study(n).run for n in available()}
    for info in pkgutil.walk_packages(studies_pkg.__path__, prefix=studies_pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        if callable(getattr(module, "main", None)):
            assert module.main in registered, f"{info.name}.main is not registered with @study"


def test_unknown_study_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="paper_grid"):
        run_study(["no_such_study"])


def test_listing(capsys):
    assert run_study(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in available())


def test_list_options_check_choices_and_show_them():
    p = StudyParser("demo", "demo study")
    p.add_list("--criteria", default="lrp", choices=["lrp", "taylor"], help="criteria")
    p.add_list("--ratios", default="0.5", kind=float)
    assert p.parse_args([]).criteria == ["lrp"]
    assert p.parse_args(["--criteria", "taylor,lrp", "--ratios", "0.3,0.7"]).ratios == [0.3, 0.7]
    assert "choices: lrp,taylor" in p.format_help()
    with pytest.raises(ConfigError, match="unknown 'magnitude'"):
        p.parse_args(["--criteria", "magnitude"])
    with pytest.raises(ConfigError, match="medprune study demo"):
        p.parse_args(["--ratios", "x"])


def test_medprune_study_command_passes_options_to_the_study():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    result = CliRunner().invoke(app, ["study", "ece_study", "--help"])
    assert result.exit_code == 0 and "--criterion" in result.output and "usage: medprune study ece_study" in result.output
    result = CliRunner().invoke(app, ["study", "--help"])
    assert result.exit_code == 0 and "paper_grid" in result.output


# Committed results that no study writes, each with what does (ARCHITECTURE.md lists them too).
NOT_A_STUDY = {"headline.json": "python -m benchmarks.headline",
               "baselines_cuda_run.*": "benchmarks/studies/gpu_baselines.sh on a CUDA machine",
               "dlb_check.md": "written by hand from dlb_check.json (the study's before/after runs at two commits)",
               "selection_split_preregistration.md": "written by hand before the recovery_selection study ran "
                                                     "(its design, fixed in advance)",
               "recovery_long_preregistration.md": "written by hand before any cell of recovery_selection's long "
                                                   "recovery arm was computed (the arm, fixed in advance)"}


def test_every_committed_result_is_declared_by_the_study_that_writes_it():
    import fnmatch
    from pathlib import Path

    from benchmarks.studies.registry import RESULTS

    patterns = [p for n in available() for p in get_study(n).outputs] + list(NOT_A_STUDY)
    orphans = [f.name for f in sorted(Path(RESULTS).iterdir())
               if not any(fnmatch.fnmatch(f.name, p) for p in patterns)]
    assert not orphans, f"results no study declares in @study(outputs=...): {orphans}"
