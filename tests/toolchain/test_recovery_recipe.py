"""One recovery recipe: `medprune prune`, `medprune deploy` and the recovery study default to the same
recipe (pure distillation at T = 4, no augmentation, 2 epochs), and flags still override it."""

from __future__ import annotations

import inspect

import pytest
import typer

from toolchain.errors import ConfigError
from toolchain.recovery.finetune import RECIPE, RecoveryConfig

# the study's measured recipe (recovery.md's header): KD only, T = 4, 2 epochs, batches not augmented
STUDY = {"epochs": 2, "temperature": 4.0, "kd_weight": 1.0, "ce_weight": 0.0, "augment": False}


def _recipe(cfg: RecoveryConfig) -> dict:
    return {k: getattr(cfg, k) for k in STUDY}


def _defaults(fn) -> dict:
    return {name: p.default.default for name, p in inspect.signature(fn).parameters.items()
            if isinstance(p.default, typer.models.OptionInfo)}


def test_recipe_is_the_studys():
    assert RECIPE == STUDY
    assert _recipe(RecoveryConfig()) == STUDY


def test_study_defaults_equal_the_recipe():
    from benchmarks.studies.recovery_grid import parser

    a = parser().parse_args([])
    assert {"epochs": a.recover_epochs, "kd_weight": a.kd_weight, "ce_weight": a.ce_weight,
            "augment": a.recover_augment} == {k: STUDY[k] for k in ("epochs", "kd_weight", "ce_weight", "augment")}
    assert parser().parse_args(["--ce-weight", "1", "--recover-augment"]).recover_augment is True


def test_prune_cli_defaults_build_the_recipe():
    from toolchain.commands import prune
    from toolchain.recovery.command import recovery_config

    app = typer.Typer()
    prune.register(app)
    d = _defaults(app.registered_commands[0].callback)
    cfg = recovery_config(d["recover_epochs"], d["recover_lr"], d["temperature"], d["kd_weight"], d["ce_weight"],
                          d["recover_subset"], "cpu", True, augment=d["recover_augment"])
    assert _recipe(cfg) == STUDY
    over = recovery_config(4, None, 2.0, 1.0, 0.5, 0, "cpu", True, augment=True)
    assert _recipe(over) == {"epochs": 4, "temperature": 2.0, "kd_weight": 1.0, "ce_weight": 0.5, "augment": True}
    assert recovery_config(0, None, None, None, None, 0, "cpu", True) is None


def test_deploy_defaults_build_the_recipe_first():
    from devices.deploy.config import DeployConfig
    from devices.deploy.recover import recovery_candidates
    from devices.deploy_cli import deploy_cmd

    d = _defaults(deploy_cmd)
    flags = {"recover_epochs": d["recover_epochs"], "kd_weight": d["kd_weight"], "ce_weight": d["ce_weight"],
             "kd_temperature": d["kd_temperature"], "recover_augment": d["recover_augment"]}
    cfg = DeployConfig(**flags, speedup="3")
    assert _recipe(cfg.recovery()) == STUDY and _recipe(DeployConfig(speedup="3").recovery()) == STUDY
    # unset loss flags: the recipe first, then its pre-declared alternative, chosen on val
    (first, kd), (second, alt) = recovery_candidates(cfg)
    assert (first, _recipe(kd)) == ("kd", STUDY)
    assert second == "kd+ce+augment" and _recipe(alt) == {**STUDY, "ce_weight": 1.0, "augment": True}
    # a loss flag fixes the recipe: only the given one is tried
    given = DeployConfig(speedup="3", ce_weight=1.0, recover_epochs=4)
    assert [(n, _recipe(c)) for n, c in recovery_candidates(given)] == [("as given", {**STUDY, "ce_weight": 1.0,
                                                                                      "epochs": 4})]


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="loss weights"):
        RecoveryConfig.with_overrides(kd_weight=0.0, ce_weight=0.0)
    with pytest.raises(ConfigError, match="epochs"):
        RecoveryConfig.with_overrides(epochs=-1)
