"""The recovery study's options (``medprune study recovery --help``) and their value types."""

from __future__ import annotations

import argparse

from .registry import StudyParser


def _model_targets(text: str) -> dict[str, list[float]]:
    """``"vgg19=3/5/8,resnet50=2/3/5"`` → per-model MACs targets."""
    try:
        out = {k.strip(): [float(v) for v in vals.split("/")]
               for k, vals in (part.split("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected model=S/S/...,..., got {text!r}") from None
    if any(v <= 1 for vals in out.values() for v in vals):
        raise argparse.ArgumentTypeError(f"MACs targets must be > 1 (dense MACs ÷ S), got {text!r}")
    return out


def _subsets(text: str) -> dict[str, int]:
    """``"600"`` → every model; ``"vgg19=600,resnet50=1000"`` → per model."""
    try:
        if "=" not in text:
            return {"*": int(text)}
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or model=N,..., got {text!r}") from None


def parser() -> StudyParser:
    """The study's options; the recovery flags default to the one recovery recipe (``finetune.RECIPE``)."""
    from toolchain.importance import available
    from toolchain.recovery.finetune import RECIPE as RECOVERY

    from .recovery_grid import RECIPE
    from .recovery_grid import __doc__ as doc

    p = StudyParser("recovery", doc)
    p.add_list("--models", default="vgg19,resnet50", choices=list(RECIPE))
    p.add_list("--data", default="pneumoniamnist,chest_xray_224", help="datasets (one dense checkpoint each)")
    p.add_list("--criteria", default="lrp,taylor,tp-magnitude,tp-taylor,random", choices=available())
    p.add_list("--macs", default="2,3,5", kind=float, help="MACs targets: dense MACs ÷ S")
    p.add_argument("--model-macs", type=_model_targets, default=_model_targets("vgg19=3/5/8,resnet50=2/3/5"),
                   help="per-model MACs targets overriding --macs, e.g. vgg19=3/5/8,resnet50=2/3/5")
    p.add_argument("--recover-epochs", type=int, default=RECOVERY["epochs"], help="distillation epochs (0: no recovery)")
    p.add_argument("--recover-subset", type=_subsets, default={"*": 0},
                   help="recover on N train images (0: all), or per model: vgg19=600,resnet50=1000")
    p.add_argument("--recover-lr", type=float, default=None, help="recovery lr (default: the dense model's)")
    # pure distillation by default (finetune.RECIPE says why); the temperature is the recipe's, not a flag here
    p.add_argument("--kd-weight", type=float, default=RECOVERY["kd_weight"], help="weight of the distillation (KL x T²) term")
    p.add_argument("--ce-weight", type=float, default=RECOVERY["ce_weight"],
                   help="weight of the class-weighted cross-entropy term")
    p.add_argument("--recover-augment", action=argparse.BooleanOptionalAction, default=RECOVERY["augment"],
                   help="augment recovery batches (off: the teacher's logits are computed once per image and "
                        "shared by every student of the run)")
    p.add_argument("--checkpoint", action="append",
                   help="data/model=path of a dense checkpoint (model=path: PneumoniaMNIST; repeatable)")
    p.add_argument("--align", action="store_true",
                   help="recipe: after distillation, fold a per-class logit offset fitted on val (the dense model's "
                        "val predictions as target) into the classifier bias; also adds it to cached cells that "
                        "lack it, even with --cached-only (it needs only val/test inference)")
    p.add_argument("--recipe", choices=("kd", "kd+align"), default="kd",
                   help="the recovery state the headline reads (kd+align needs --align); chosen on val")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cells already computed (e.g. by parallel per-criterion runs), compute none")
    p.add_argument("--recompute-stale", action="store_true",
                   help="recompute cached cells computed by another code version of the criterion, removal or "
                        "recovery code, or before versions were recorded (else they are reused and listed)")
    p.add_argument("--retime", action="store_true",
                   help="measure the ORT speedup of cached cells again (once) from their recovered checkpoints")
    p.add_argument("--runtimes", action="store_true",
                   help="also measure ORT/OpenVINO FP32 and INT8 for the dense and the val-chosen recovered model "
                        "(minutes per model: every runtime exports both)")
    p.add_argument("--runtimes-per-cell", nargs="?", const="measure", choices=("measure", "cached"), default=None,
                   help="also ORT/OpenVINO FP32 and INT8 of every recovered (KD) cell, timed against the dense model "
                        "in each runtime and precision; cached per cell (about a minute each); 'cached': report only "
                        "the cells already measured")
    p.add_argument("--sampling", default="clustering")
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--pool-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    p.add_argument("--repeats", type=int, default=100, help="timed ORT runs per model")
    p.add_argument("--workers", type=_positive, default=1,
                   help="cells computed at once, as Ray tasks of one CPU each (MEDPRUNE_THREADS torch threads, "
                        "default 1; RAY_ADDRESS for a cluster); 1: one after the other in this process")
    p.add_out()
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value
