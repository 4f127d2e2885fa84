"""`medprune prune`: score units on reference images, mask at several ratios, compare with the dense model."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import typer

from .choices import Criterion, Sampling, Scope, constant, one_of
from .options import ordinal_option

RECOVERY = constant("toolchain.recovery.finetune", "RECIPE")  # the one recovery recipe, read without torch
LosslessRule = one_of(constant("toolchain.prune_eval", "LOSSLESS_RULES"))  # rule names, read without torch


def parse_ratios(text: str) -> list[float]:
    from ..errors import ConfigError
    from ..masking import check_ratio

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError("--ratios needs at least one ratio, e.g. 0.15,0.3,0.5")
    ratios = [check_ratio(p) for p in parts]
    return sorted(set(ratios))


def parse_options(pairs: list[str] | None) -> dict:
    """``["n_steps=16", "baseline=mean"]`` → ``{"n_steps": 16, "baseline": "mean"}`` (JSON values where valid)."""
    from ..errors import ConfigError

    out = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--criterion-opt expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="model .safetensors (with its .json)"),
        data: str = typer.Option(None, "--data", "-d", help="dataset (default: the one it was trained on)"),
        criterion: Criterion = typer.Option("lrp", "--criterion", help="importance criterion"),
        criterion_opt: list[str] = typer.Option(None, "--criterion-opt", help="criterion option key=value (repeatable)"),
        sampling: Sampling = typer.Option("clustering", "--sampling", help="reference sampling strategy"),
        n_per_class: int = typer.Option(10, "--n-per-class", help="reference images per class"),
        pool_per_class: int = typer.Option(0, "--pool-per-class",
                                           help="score at most this many train images per class when sampling (0: all)"),
        seed: int = typer.Option(0, "--seed"),
        targets: str = typer.Option("label", "--targets", help="explain the true 'label' or the 'predicted' class"),
        ratios: str = typer.Option("0.15,0.3,0.5,0.7", "--ratios", help="comma-separated fractions of units to prune"),
        scope: Scope = typer.Option("global", "--scope", help="global (rank all units) or layer (ratio per layer)"),
        normalize: str = typer.Option("none", "--normalize", help="none or l1 (per-layer, before global ranking)"),
        find_lossless: bool = typer.Option(False, "--find-lossless", help="search the largest lossless ratio"),
        tolerance: float = typer.Option(1.0, "--tolerance", help="lossless: max accuracy drop in points"),
        sens_tolerance: float = typer.Option(2.0, "--sens-tolerance", help="lossless: max per-class sensitivity drop (pts)"),
        qwk_tolerance: float = typer.Option(2.0, "--qwk-tolerance", help="lossless, graded classes (--ordinal): max QWK "
                                            "drop in points (100 x kappa), as deploy's gate"),
        search_split: str = typer.Option("val", "--search-split", help="split the lossless search runs on: val or "
                                         "train (never test: test only reports)"),
        lossless_rule: LosslessRule = typer.Option("bound", "--lossless-rule",
                                                   help="bound: deploy's rule, the upper ends of the 95 % paired "
                                                        "bootstrap intervals of the drops within the tolerances; "
                                                        "point: the point drops (no interval; the paper grid's rule)"),
        search_aware: bool = typer.Option(False, "--search-aware",
                                          help="--find-lossless: bounds simultaneous over the k ratios the search "
                                               "may judge (Bonferroni: each at 1 - 0.05/k) instead of 95 % each"),
        split: str = typer.Option("test", "--split", help="split the table reports (test or val)"),
        save_masks: Path = typer.Option(None, "--save-masks", help="folder for masks (one per ratio) and scores"),
        json_out: Path = typer.Option(None, "--json", help="also write everything as JSON here"),
        batch_size: int = typer.Option(128, "--batch-size", help="evaluation batch size"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        data_dir: str = typer.Option(None, "--data-dir", help="data root (default: MEDPRUNE_DATA)"),
        ordinal: bool = ordinal_option(),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
        speedup: str = typer.Option(None, "--speedup", help="budget: measured ONNX Runtime CPU batch-1 speedup, e.g. 3"),
        macs_budget: str = typer.Option(None, "--macs-budget", help="budget: MACs (<=1: fraction of dense, or 120M)"),
        params_budget: str = typer.Option(None, "--params-budget", help="budget: parameters (<=1: fraction, or 2M)"),
        latency_ms: str = typer.Option(None, "--latency-ms", help="budget: measured ONNX Runtime batch-1 ms"),
        recover_epochs: int = typer.Option(RECOVERY["epochs"], "--recover-epochs",
                                           help="budget: distillation epochs (0: none)"),
        recover_lr: float = typer.Option(None, "--recover-lr", help="budget: recovery lr (default: the dense lr)"),
        recover_subset: int = typer.Option(0, "--recover-subset", help="budget: recover on N train images (0: all)"),
        temperature: float = typer.Option(RECOVERY["temperature"], "--kd-temperature",
                                          help="budget: distillation temperature"),
        kd_weight: float = typer.Option(RECOVERY["kd_weight"], "--kd-weight", help="budget: weight of the KL (x T^2) term"),
        ce_weight: float = typer.Option(RECOVERY["ce_weight"], "--ce-weight",
                                        help="budget: weight of the class-weighted CE term (the recipe is pure "
                                             "distillation: CE moves the operating point away from the dense model's)"),
        recover_augment: bool = typer.Option(RECOVERY["augment"], "--recover-augment/--no-recover-augment",
                                             help="budget: augment recovery batches"),
        iterative: int = typer.Option(1, "--iterative-steps", help="budget: prune/recover/rescore in N steps"),
        round_to: int = typer.Option(None, "--round-to", help="budget: keep channel counts multiples of N"),
        out_checkpoint: Path = typer.Option(None, "--out", help="budget: write the returned model here"),
    ) -> None:
        """Prune by importance: dense vs masked metrics per ratio (+ the largest lossless ratio).

        With a budget (--speedup, --macs-budget, --params-budget or --latency-ms) it instead finds the
        pruning amount that meets it on the physically removed model, recovers with distillation and
        gates on val (see toolchain.recovery)."""
        from rich.console import Console

        from ..atomic import atomic_dir, atomic_file, ensure_replaceable_dir, ensure_writable_file
        from ..errors import ConfigError
        from ..importance import get_criterion
        from ..masking import SCOPES, normalize_option
        from ..metrics import metrics_table
        from ..prune_eval import (
            evaluate_ratios,
            load_context,
            lossless_evaluator,
            reference_inputs,
            save_scores,
            score_units,
        )
        from ..sampling import STRATEGIES
        from ..settings import resolve_device
        from ..units import find_unit_layers

        console = Console(stderr=True, quiet=quiet)
        out = Console()

        def say(msg: str) -> None:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)

        # every user input is checked before the (slow) checkpoint and data loading
        from ..budget import one_budget
        from ..recovery.command import recovery_config

        budget = one_budget(speedup=speedup, macs=macs_budget, params=params_budget, latency_ms=latency_ms)
        rcfg = recovery_config(recover_epochs, recover_lr, temperature, kd_weight, ce_weight, recover_subset,
                               resolve_device(device), quiet, augment=recover_augment, seed=seed) if budget else None
        if recover_epochs < 0 or iterative < 1:
            raise ConfigError("--recover-epochs must be >= 0 and --iterative-steps >= 1")
        ratio_list = parse_ratios(ratios)
        crit = get_criterion(criterion, **parse_options(criterion_opt))
        if sampling not in STRATEGIES:
            raise ConfigError(f"unknown sampling strategy {sampling!r}; choose from {', '.join(STRATEGIES)}")
        if scope not in SCOPES:
            raise ConfigError(f"unknown pruning scope {scope!r}; choose global or layer")
        norm = normalize_option(normalize)
        if targets not in ("label", "predicted"):
            raise ConfigError(f"--targets must be label or predicted, got {targets!r}")
        if split not in ("train", "val", "test"):
            raise ConfigError(f"--split must be train, val or test, got {split!r}")
        if search_split not in ("train", "val"):  # a ratio chosen on test would be reported on the split that chose it
            raise ConfigError(f"--search-split must be val or train, got {search_split!r}: the test split decides "
                              "nothing, it only reports the ratio chosen on val (--split test)")
        if n_per_class < 1:
            raise ConfigError(f"--n-per-class must be a positive integer, got {n_per_class}")
        if search_aware and (not find_lossless or budget is not None or lossless_rule != "bound"):
            raise ConfigError("--search-aware applies to --find-lossless with --lossless-rule bound (no budget)")
        if min(tolerance, sens_tolerance, qwk_tolerance) < 0:
            raise ConfigError("--tolerance, --sens-tolerance and --qwk-tolerance must be >= 0 points")
        if save_masks is not None:  # never replace a user's file or folder with masks
            ensure_replaceable_dir(save_masks, "--save-masks", ("masks_r", "scores"))
        if json_out is not None:
            ensure_writable_file(json_out, "--json")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            say(f"loading {checkpoint}")
            ctx = load_context(checkpoint, data, data_dir=data_dir, device=resolve_device(device),
                               ordinal=ordinal or None)
            layers = find_unit_layers(ctx.model)
            x = y = idx = None
            if crit.needs_data:
                say(f"selecting {n_per_class} references per class ({sampling})")
                x, y, idx = reference_inputs(ctx, n_per_class, sampling, seed,
                                             pool_per_class=pool_per_class or None)
            say(f"scoring {sum(ly.size for ly in layers)} units in {len(layers)} layers with {crit!r}")
            scores, seconds = score_units(ctx.model, crit, x, y if targets == "label" else None, layers)
            say(f"scored in {seconds:.1f}s")
        for w in caught:
            console.print(f"[yellow]warning:[/] {w.message}")

        meta = {
            "checkpoint": ctx.checkpoint, "checkpoint_sha256": ctx.sha256, "arch": ctx.meta.get("arch"),
            "dataset": ctx.ds.name, "dataset_fingerprint": ctx.ds.fingerprint, "criterion": crit.name,
            "criterion_repr": repr(crit), "sampling": sampling if crit.needs_data else None,
            "n_per_class": n_per_class if crit.needs_data else None, "seed": seed, "targets": targets,
            "reference_indices": idx.tolist() if idx is not None else None,
        }
        if budget is not None:
            from ..recovery import Gates
            from ..recovery.command import run_budget

            run_budget(ctx, crit, scores, layers, x, y if targets == "label" else None, budget, rcfg,
                       Gates(tolerance, sens_tolerance), steps=iterative, round_to=round_to,
                       out_path=out_checkpoint, json_out=json_out, meta=meta, say=say, console=console, out=out)
            return
        from ..ordinal import is_ordinal

        graded = is_ordinal(ctx.ds)  # graded classes: the search also bounds the QWK drop (deploy's gate)
        ev = lossless_evaluator(lossless_rule, ctx, scores, layers, seed=seed, scope=scope, normalize=norm,
                                batch_size=batch_size, meta=meta, log=None if quiet else say,
                                qwk_tolerance=qwk_tolerance if graded else None)
        # the search (on val) runs before any ratio is evaluated on --split: test is read only to report
        lossless = (_search_lossless(ev, search_split, tolerance, sens_tolerance, qwk_tolerance if graded else None,
                                     say, console, search_aware) if find_lossless else None)
        columns = evaluate_ratios(ev, ratio_list, split)
        if lossless:
            lossless["metrics"] = ev.metrics(lossless["ratio"], split)
            columns[f"lossless {lossless['ratio']:.2f}"] = lossless["metrics"]

        all_ratios = ratio_list + ([lossless["ratio"]] if lossless else [])
        reports = {f"{r:.2f}": ev.report(r) for r in all_ratios}
        out.print(metrics_table(columns, reference="dense",
                                title=f"{meta['arch']} · {crit.name} · {meta['sampling'] or 'no data'} · {split}"))
        for key, rep in reports.items():
            out.print(f"ratio {key}: {rep['units_pruned']}/{rep['units_total']} units pruned "
                      f"({rep['units_pruned_pct']:.1f}%), {rep['params_zeroed_pct']:.1f}% of parameters zeroed")
        if lossless:
            _print_lossless(lossless, out)

        if save_masks is not None:
            with atomic_dir(save_masks) as tmp:
                for r in all_ratios:
                    ev.masks(r).save(tmp / f"masks_r{r:.2f}")
                save_scores(tmp / "scores", scores, {**meta, "layers": [ly.to_dict() for ly in layers]})
            out.print(f"masks: {save_masks}")
        if json_out is not None:
            payload = {
                "command": "medprune prune", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta,
                "split": split, "scope": scope, "normalize": norm or "none", "scoring_seconds": seconds,
                "ratios": {k: {"metrics": v, "mask_report": {kk: vv for kk, vv in reports.get(k, {}).items()
                                                             if kk != "per_layer"}}
                           for k, v in columns.items() if not k.startswith("lossless")},
                "lossless": lossless,
            }
            with atomic_file(json_out, "w") as fh:
                json.dump(payload, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
            out.print(f"json: {json_out}")


def _search_lossless(ev, split: str, tolerance: float, sens_tolerance: float, qwk_tolerance: float | None, say,
                     console, search_aware: bool = False) -> dict:
    """``find_lossless`` on ``split`` with ``ev``'s rule, the verdict at the ratio found and the resolution warnings."""
    from ..lossless import resolution_warnings
    from ..prune_eval import find_lossless

    say(f"searching the lossless ratio on {split} (accuracy drop <= {tolerance} pts, sensitivity drop <= "
        f"{sens_tolerance} pts{f', QWK drop <= {qwk_tolerance} pts' if qwk_tolerance is not None else ''})")
    found = find_lossless(ev, tolerance, sens_tolerance, search_split=split, search_aware=search_aware)
    if qwk_tolerance is not None:
        found["qwk_tolerance_pts"] = qwk_tolerance
        found["rule"] += "; graded classes: the QWK drop as well, <= qwk-tolerance (points)"
    found["warnings"] = resolution_warnings(ev.ctx.ds.split(split).labels, ev.ctx.ds.class_names, tolerance,
                                            sens_tolerance, split)
    for line in found["warnings"]:
        console.print(f"[yellow]warning:[/] {line}")
    # the verdict that accepted the ratio (a failing one for ratio 0: the smallest ratio tried), from the trace
    tried = {round(t["ratio"], 6): t for t in found["trace"]}
    found["verdict"] = tried.get(round(found["ratio"], 6)) or (found["trace"][0] if found["trace"] else None)
    return found


def _print_lossless(found: dict, out) -> None:
    """The rule, the ratio found and its drops on the search split (with their 95 % intervals under the bound rule)."""
    split, v = found["search_split"], found["verdict"] or {}
    out.print(f"lossless rule: {found['rule']}")
    drops = ""
    if "accuracy_drop_ci_pts" in v:
        ci = v["accuracy_drop_ci_pts"]
        worst = max(v["sensitivity_drop_ci_pts"].items(), key=lambda kv: kv[1][1], default=None)
        drops = (f"accuracy drop {v['accuracy_drop_pts']:.2f} pts [{100 * v['confidence']:.4g}% CI {ci[0]:.2f}, "
                 f"{ci[1]:.2f}]"
                 + (f", largest sensitivity-drop bound {worst[1][1]:.2f} pts ({worst[0]})" if worst else "")
                 + f", n={v['n']}")
    elif v:
        drops = f"accuracy drop {v['accuracy_drop_pts']:.2f} pts, worst sensitivity drop {v['worst_sensitivity_drop_pts']:.2f} pts"
    trace = (f"{len(found['trace'])} evaluations"
             + ("" if found["monotone_on_trace"] else "; pass/fail was NOT monotone on the trace"))
    if found["ratio"] > 0:
        out.print(f"lossless ratio: {found['ratio']:.2f} (searched on {split}: {drops}; {trace})")
    else:
        failed = "; ".join(v.get("failed") or [])
        out.print(f"no ratio >= 0.01 passes the rule on {split} ({trace}"
                  + (f"; at {v['ratio']:.2f}: {failed}" if failed else "") + ")")
