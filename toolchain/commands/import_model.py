"""`medprune import`: a model trained elsewhere (timm or torchvision weights) → a validated medprune checkpoint.

The checkpoint is the same ``model.safetensors`` + ``model.json`` pair that ``medprune train`` writes,
so prune, export, deploy and bench load it. Its preprocessing is what the user trained with (``--mean``/
``--std``, ImageNet's by default), never re-estimated. With ``--data`` the model is evaluated at once
(val and test), and the data's loading settings and input profile are recorded for later commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_stats(text: str, imagenet: tuple[float, ...], in_chans: int, flag: str) -> tuple[float, ...]:
    """``"imagenet"`` or comma-separated floats → one value per input channel (a grey model averages ImageNet's)."""
    from ..errors import ConfigError

    raw = text.strip().lower()
    if raw == "imagenet":
        return imagenet if in_chans == 3 else (round(sum(imagenet) / 3, 4),) * in_chans
    try:
        values = tuple(float(v) for v in raw.split(","))
    except ValueError:
        raise ConfigError(f"{flag} expects 'imagenet' or comma-separated numbers, got {text!r}") from None
    if len(values) not in (1, in_chans):
        raise ConfigError(f"{flag} gives {len(values)} values for {in_chans} input channels")
    return values * in_chans if len(values) == 1 else values


def _class_names(names: list[str] | None, num_classes: int, ds) -> tuple[list[str], list[str] | None]:
    """``(class names, the dataset's own names they replaced or None)``."""
    from ..data.class_names import rename_classes
    from ..errors import ConfigError

    if names and num_classes and len(names) != num_classes:
        raise ConfigError(f"--class-names gives {len(names)} names but --num-classes is {num_classes}")
    if ds is not None:
        if num_classes and num_classes != ds.num_classes:
            raise ConfigError(f"--num-classes is {num_classes} but dataset {ds.name} has {ds.num_classes} classes")
        source = rename_classes(ds, names)
        return list(ds.class_names), (source if source != list(ds.class_names) else None)
    if names:
        return names, None
    if not num_classes:
        raise ConfigError("give --class-names a,b,... or --num-classes N (or --data to read them)")
    return [f"class_{i}" for i in range(num_classes)], None


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_cmd(
        arch: str = typer.Option(..., "--arch", help="timm model name, medprune alias or torchvision:<name>"),
        weights: Path = typer.Option(..., "--weights", help=".safetensors or a state dict .pt/.pth"),
        out: Path = typer.Option(..., "--out", help="folder (gets model.safetensors + model.json) or X.safetensors"),
        class_names: str = typer.Option(None, "--class-names", help="comma-separated class names in label order"),
        num_classes: int = typer.Option(0, "--num-classes", help="number of classes (if no --class-names)"),
        img_size: int = typer.Option(224, "--img-size", help="input side the model was trained at"),
        in_chans: int = typer.Option(3, "--in-chans", help="input channels the model was trained with (1 or 3)"),
        mean: str = typer.Option("imagenet", "--mean", help="per-channel input mean in [0,1] units, or imagenet"),
        std: str = typer.Option("imagenet", "--std", help="per-channel input std in [0,1] units, or imagenet"),
        build_arg: list[str] = typer.Option(None, "--build-arg", help="architecture argument key=value (repeatable)"),
        data: str = typer.Option(None, "--data", "-d", help="dataset to evaluate on at once (and record)"),
        load_size: int = typer.Option(0, "--load-size", help="resize images to this side while loading (0: off)"),
        data_dir: str = typer.Option(None, "--data-dir", help="data root (default: MEDPRUNE_DATA)"),
        batch_size: int = typer.Option(64, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    ) -> None:
        """Import trained weights as a medprune checkpoint (validated; evaluated with --data)."""
        from rich.console import Console

        from ..data import Preprocess, load_dataset
        from ..data.class_names import parse_class_names
        from ..data.input_profile import input_profile
        from ..errors import ConfigError
        from ..evaluate import evaluate
        from ..metrics import metrics_table
        from ..models import load_checkpoint, parse_build_args, save_checkpoint
        from ..models.import_weights import import_model
        from ..settings import resolve_device

        if in_chans not in (1, 3):
            raise ConfigError(f"--in-chans must be 1 or 3, got {in_chans}")
        if num_classes < 0 or load_size < 0:
            raise ConfigError("--num-classes and --load-size must not be negative")
        preprocess = Preprocess(img_size, in_chans, parse_stats(mean, IMAGENET_MEAN, in_chans, "--mean"),
                                parse_stats(std, IMAGENET_STD, in_chans, "--std"))
        names = parse_class_names(class_names)
        args = parse_build_args(build_arg)
        ds = load_dataset(data, data_dir, load_size=load_size or None) if data else None
        names, source_names = _class_names(names, num_classes, ds)
        model, report = import_model(arch, weights, len(names), in_chans, img_size, args)
        meta = {"class_names": names, "preprocess": preprocess.to_dict(), "imported": report}
        if ds is not None:
            dev = resolve_device(device)
            model.to(dev)
            meta["metrics"] = {s: evaluate(model, ds, s, preprocess, batch_size, dev)
                               for s in ("val", "test") if s in ds.splits}
            meta["dataset"] = {"name": ds.name, "fingerprint": ds.fingerprint, "source": str(ds.source),
                               **({"source_class_names": source_names} if source_names else {})}
            meta["data_config"] = {"data": data, "load_size": load_size or None, "val_fraction": 0.1, "seed": 0}
            meta["input_profile"] = input_profile(ds)
            model.cpu()
        weights_out = save_checkpoint(out if out.suffix == ".safetensors" else out / "model.safetensors",
                                      model, meta)
        try:  # the written pair must load and compute the same, or it is not left behind
            _same_logits(model, load_checkpoint(weights_out)[0], in_chans, img_size)
        except Exception:
            for f in (weights_out, weights_out.with_suffix(".json")):
                f.unlink(missing_ok=True)
            raise
        console = Console()
        for note in report["notes"]:
            console.print(f"[dim]{note}[/dim]")
        if "conversion_max_abs" in report:
            console.print(f"converted logits/features match the source model within {report['conversion_max_abs']:.1e}")
        if meta.get("metrics"):
            console.print(metrics_table({f"{meta['imported']['source_arch']} {s}": m
                                         for s, m in meta["metrics"].items()}))
        print(f"checkpoint: {weights_out}")


def _same_logits(model, reloaded, in_chans: int, img_size: int) -> None:
    import torch

    from ..errors import CheckpointError

    x = torch.randn(2, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = float((model.eval()(x) - reloaded(x)).abs().max())
    if diff > 1e-5:
        raise CheckpointError(f"the written checkpoint does not reproduce the imported model (max |diff| {diff:.2e})")
