"""`medprune prune` end to end on a tiny trained checkpoint, the library behind it, and its error paths."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import train_tiny_resnet, write_tiny_npz
from toolchain.cli import main
from toolchain.lossless import RULE
from toolchain.masking import MaskSet, apply_masks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A test_resnet trained for two epochs on the tiny brightness dataset (16 px, 1 channel)."""
    return train_tiny_resnet(tmp_path_factory.mktemp("prune_cli"))


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _one_error_line(err: str) -> bool:
    errors = [line for line in err.splitlines() if line.startswith("medprune: error:")]
    return len(errors) == 1 and "Traceback" not in err


def test_prune_end_to_end(ckpt, tmp_path, capsys):
    weights, npz = ckpt
    masks_dir, js = tmp_path / "masks", tmp_path / "out.json"
    code, out, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", "taylor",
                           "--sampling", "random", "--n-per-class", "3", "--ratios", "0.3,0.15",
                           "--find-lossless", "--tolerance", "5", "--sens-tolerance", "10",
                           "--save-masks", str(masks_dir), "--json", str(js), "-q"], capsys)
    assert code == 0, err
    assert "dense" in out and "0.15" in out and "0.30" in out and "lossless" in out
    doc = json.loads(js.read_text())
    assert set(doc["ratios"]) >= {"dense", "0.15", "0.30"}
    assert doc["criterion"] == "taylor" and len(doc["reference_indices"]) == 6
    lossless = doc["lossless"]
    assert 0 <= lossless["ratio"] < 1 and lossless["trace"]
    # deploy's rule by default: the upper 95 % bounds of the paired drops, not the point drops
    assert lossless["rule"] == RULE and f"lossless rule: {RULE}" in " ".join(out.split())
    for r in lossless["trace"]:
        assert r["passes"] == (r["accuracy_drop_ci_pts"][1] <= 5 + 1e-9
                               and all(ci[1] <= 10 + 1e-9 for ci in r["sensitivity_drop_ci_pts"].values()))
        assert r["split"] == "val" and r["n"] == 16
    assert lossless["verdict"]["ratio"] == pytest.approx(lossless["ratio"]) or lossless["ratio"] == 0
    assert doc["ratios"]["0.30"]["mask_report"]["units_pruned_pct"] == pytest.approx(30, abs=0.5)

    # the saved masks fit the model, and physical removal computes what masking does
    from toolchain.models import load_checkpoint

    model, _ = load_checkpoint(weights)
    masks = MaskSet.load(masks_dir / "masks_r0.30", model=model)
    assert masks.meta["criterion"] == "taylor" and (masks_dir / "scores.safetensors").exists()
    x = torch.randn(2, 1, 16, 16)
    from toolchain import removal

    pruned, _ = removal.remove_units(model, masks, x, granularity="neuron")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), apply_masks(model, masks)(x), rtol=1e-4, atol=1e-5)


def test_data_free_criterion_skips_sampling(ckpt, tmp_path, capsys):
    weights, npz = ckpt
    code, out, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", "magnitude",
                           "--ratios", "0.5", "--scope", "layer", "--normalize", "l1",
                           "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["sampling"] is None and doc["reference_indices"] is None and doc["scope"] == "layer"


def test_lossless_search_library(ckpt):
    """Bisection with a fake pass/fail curve: finds the boundary on a 1 % grid and records the trace."""
    from toolchain.prune_eval import find_lossless

    class Fake:
        def __init__(self, boundary):
            self.boundary, self.calls = boundary, []

        def passes(self, ratio, split, tol, sens):
            self.calls.append(ratio)
            ok = ratio <= self.boundary
            return {"ratio": ratio, "accuracy": 1.0, "accuracy_drop_pts": 0.0 if ok else 5.0,
                    "worst_sensitivity_drop_pts": 0.0, "passes": ok}

    for boundary in (0.0, 0.07, 0.43, 0.5, 0.99):
        fake = Fake(boundary)
        res = find_lossless(fake, 1.0, 2.0)
        assert res["ratio"] == pytest.approx(boundary)
        assert len(fake.calls) <= 10 + 4 and res["monotone_on_trace"]
        assert find_lossless(Fake(boundary), coarse_step=None)["ratio"] == pytest.approx(boundary)


def test_find_lossless_bound_rule_warns_about_small_val_classes_and_reads_test_last(ckpt, tmp_path, capsys,
                                                                                    monkeypatch):
    """Val has 8 images per class: one image is 12.5 sensitivity points, more than --sens-tolerance 2, so the
    command says so (and what to do) on the console and in the JSON; test is read only after the search."""
    from toolchain.data.dataset import Dataset

    weights, npz = ckpt
    reads, original = [], Dataset.split
    monkeypatch.setattr(Dataset, "split", lambda self, name: (reads.append(name), original(self, name))[1])
    js = tmp_path / "small.json"
    code, out, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", "magnitude",
                           "--ratios", "0.5", "--find-lossless", "--json", str(js)], capsys)
    assert code == 0, err
    lossless = json.loads(js.read_text())["lossless"]
    warned = " ".join(err.split())
    for name in ("class_0", "class_1"):
        assert any(w.startswith(f"class {name} has 8 val images: one image is 12.50 sensitivity points")
                   and "raise --sens-tolerance to >= 12.50" in w for w in lossless["warnings"]), lossless["warnings"]
        assert f"class {name} has 8 val images" in warned
    assert any(w.startswith("val has 16 images: one image is 6.25 accuracy points") for w in lossless["warnings"])
    assert "lossless rule:" in out and ("lossless ratio:" in out or "no ratio >= 0.01 passes the rule on val" in out)
    assert "test" in reads and "test" not in reads[: max(i for i, r in enumerate(reads) if r == "val")], reads


def test_point_rule_is_explicit_and_search_split_test_is_refused(ckpt, tmp_path, capsys):
    weights, npz = ckpt
    base = ["prune", "-c", str(weights), "--data", str(npz), "--criterion", "magnitude", "--ratios", "0.5",
            "--find-lossless", "--tolerance", "5", "--sens-tolerance", "10"]
    js = tmp_path / "point.json"
    code, out, err = _run([*base, "--lossless-rule", "point", "--json", str(js), "-q"], capsys)
    assert code == 0, err
    lossless = json.loads(js.read_text())["lossless"]
    assert lossless["rule"].startswith("point:") and "lossless rule: point:" in out
    for r in lossless["trace"]:
        assert r["passes"] == (r["accuracy_drop_pts"] <= 5 + 1e-9 and r["worst_sensitivity_drop_pts"] <= 10 + 1e-9)
    for extra in (["--search-split", "test"], ["--search-split", "test", "--lossless-rule", "point"]):
        code, _, err = _run([*base, *extra, "--json", str(tmp_path / "never.json")], capsys)
        assert code == 2 and _one_error_line(err) and "--search-split must be val or train" in err
        assert "test split decides nothing" in err and not (tmp_path / "never.json").exists()
    code, _, err = _run([*base, "--lossless-rule", "interval"], capsys)
    assert code == 2 and "interval" in err and "Traceback" not in err


def test_lossless_evaluator_names_its_rule(ckpt):
    """The rule table maps names to evaluators (deploy's bound rule, the grids' point rule); find_lossless
    records the rule of the evaluator it searched with."""
    from toolchain.errors import ConfigError
    from toolchain.prune_eval import (
        LOSSLESS_RULES,
        BoundEvaluator,
        RatioEvaluator,
        find_lossless,
        load_context,
        lossless_evaluator,
    )

    weights, npz = ckpt
    ctx = load_context(weights, str(npz))
    scores = {}
    assert set(LOSSLESS_RULES) == {"bound", "point"}
    bound = lossless_evaluator("bound", ctx, scores, [], seed=3)
    point = lossless_evaluator("point", ctx, scores, [], seed=3)
    assert type(bound) is BoundEvaluator and bound.seed == 3 and type(point) is RatioEvaluator
    assert bound.rule == RULE and point.rule.startswith("point:")
    with pytest.raises(ConfigError, match="unknown lossless rule 'interval'"):
        lossless_evaluator("interval", ctx, scores, [])

    class Always(RatioEvaluator):
        def passes(self, ratio, split, tol, sens):
            return {"ratio": ratio, "passes": True}

    assert find_lossless(Always(ctx, scores, []), coarse_step=None)["rule"] == RatioEvaluator.rule


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--ratios", "0.3,1.0"], "[0, 1)"),
        (["--ratios", "-0.2"], "-0.2"),
        (["--criterion", "nope"], "'nope' is not one of 'dlb'"),  # the choices come from the registry
        (["--sampling", "kmeans"], "'kmeans' is not one of 'confidence'"),
        (["--n-per-class", "1000"], "larger than every class"),
        (["--scope", "block"], "scope"),
        (["--criterion-opt", "n_steps"], "key=value"),
    ],
)
def test_errors_are_one_line(ckpt, capsys, extra, message):
    weights, npz = ckpt
    argv = ["prune", "-c", str(weights), "--data", str(npz), "--criterion", "taylor", "--sampling", "random",
            *extra]
    code, _, err = _run(argv, capsys)
    assert code != 0
    assert message in err and _one_error_line(err)


def test_checkpoint_dataset_mismatch(ckpt, tmp_path, capsys):
    weights, _ = ckpt
    three = write_tiny_npz(tmp_path / "threemnist.npz", classes=3)
    code, _, err = _run(["prune", "-c", str(weights), "--data", str(three), "--criterion", "magnitude"], capsys)
    assert code != 0 and "classes" in err and _one_error_line(err)
    code, _, err = _run(["prune", "-c", str(tmp_path / "missing.safetensors"), "--data", str(three)], capsys)
    assert code != 0 and _one_error_line(err)
