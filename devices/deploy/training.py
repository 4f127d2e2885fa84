"""Stage 1, **train**: the dense checkpoint deploy starts from.

Not a :class:`~devices.deploy.stage.Stage`: ``toolchain.train`` caches a run by its own config and the
data fingerprint, and ``--checkpoint`` skips it. Its output is the checkpoint path and its sha256 (which
keys every later stage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.recipes import recipe_for

from .config import DeployConfig


@dataclass(frozen=True)
class Trained:
    weights: Path
    sha256: str
    config: dict | None  # the TrainConfig that produced the weights (None if the checkpoint lacks it)
    source: str  # "checkpoint" or "train (cached by its config)"
    seconds: float


def train_checkpoint(cfg: DeployConfig, console) -> Trained:
    from toolchain.models import load_checkpoint, recorded_sha256
    from toolchain.train import TrainConfig, train

    t0 = time.perf_counter()
    console.print("[bold][0] train[/] " + ("(--checkpoint given: skipped)" if cfg.checkpoint else
                                          f"… {cfg.model}, {cfg.epochs} epochs (cached by config)"))
    if cfg.checkpoint:
        weights = Path(cfg.checkpoint)
        _, meta = load_checkpoint(weights)  # validates sidecar, shapes, finiteness
        config, source = meta.get("train_config"), "checkpoint"
    else:
        recipe = recipe_for(cfg.model)  # the family's lr and build args (toolchain.recipes); warm-up stays default
        tc = TrainConfig(model=cfg.model, data=cfg.data, img_size=cfg.img_size, epochs=cfg.epochs, seed=cfg.seed,
                         lr=cfg.lr or (recipe.lr if recipe else TrainConfig.lr), device=cfg.device,
                         data_dir=cfg.data_dir, build_args=dict(recipe.build_args) if recipe else {},
                         allow_missing_class=cfg.allow_missing_class, ordinal=cfg.ordinal,
                         val_from_train=cfg.val_from_train, val_fraction=cfg.val_fraction)
        weights = train(tc, read_test=False)  # test is read once, in the final report (#14)
        config, source = tc.to_dict(), "train (cached by its config)"
    sha = recorded_sha256(weights)
    console.print(f"    checkpoint {weights} (sha256 {sha[:12]})")
    return Trained(weights, sha, config, source, round(time.perf_counter() - t0, 1))
