"""What a deploy run is asked to do: :class:`DeployConfig`, validated once by :meth:`DeployConfig.resolved`.

Every later module reads a resolved config and trusts it; bad input stops here with one line (exit 2)
before any data is read or any stage runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from toolchain.errors import ConfigError, MedpruneError

TARGET_ALIASES = {"jetson": "jetson-orin-nano", "x86": "x86-edge", "edge": "x86-edge"}
DEFAULT_MODEL, DEFAULT_DATA, DEFAULT_IMG_SIZE = "vgg19", "pneumoniamnist", 32
PRECISIONS = ("fp32", "fp16", "int8")


class DeployInterrupted(MedpruneError):
    exit_code = 130


@dataclass
class DeployConfig:
    model: str | None = None  # None: the checkpoint's model, else vgg19
    target: str = "cpu"
    data: str | None = None  # None: the checkpoint's dataset, else pneumoniamnist
    criterion: str = "lrp"
    sampling: str = "clustering"
    n_per_class: int = 10
    pool_per_class: int | None = 256  # images per class the sampler scores (None: the whole train split)
    ratio: str = "auto"  # "auto" or a float in [0, 1)
    granularity: str = "neuron"  # neuron | group (neuron measured better: see README "Deploy")
    precision: str = "default"  # default = the target profile's
    out: str = "dist"
    img_size: int | None = None  # None: the checkpoint's, else 32
    epochs: int = 3
    lr: float | None = None
    seed: int = 0
    # the selection split (toolchain.data.splits), as `medprune train`: None = the checkpoint's, else 0 / 0.1
    val_from_train: float | None = None  # stratified fraction of train moved into an official val split
    val_fraction: float | None = None  # the fraction of train cut into val when the data has no val split
    tolerance: float = 1.0  # accuracy drop allowed, points
    sens_tolerance: float = 2.0  # per-class sensitivity drop allowed, points
    ordinal: bool = False  # classes are ordered grades (else as the checkpoint was trained): QWK/MAE reported
    qwk_tolerance: float = 2.0  # with graded classes: test QWK drop allowed at the gate, points (100 x kappa)
    # the val search uses tolerances x margin; 1: the full tolerances (the rule's bootstrap bound is the margin)
    search_margin: float = 1.0
    max_ratio: float = 0.9
    round_to: int | None = None  # None: the profile's channel multiple (8 for TensorRT)
    fidelity_images: int = 16
    calibrate: bool = True  # temperature scaling on val, folded into the classifier (predictions unchanged)
    bench_runs: int = 50
    cache_bench: bool = True  # False: re-measure even when a bench stage with the same key exists
    samples: int = 4
    device: str = "auto"
    data_dir: str | None = None
    name: str | None = None
    cache: str | None = None
    checkpoint: str | None = None  # deploy this trained checkpoint instead of training one
    allow_missing_class: bool = False  # keep a class without images (toolchain.data.labels)
    sign_key: str | None = None  # Ed25519 private key (medprune keygen): the package gets manifest.sig
    data_description: str | None = None  # the model card's data text (else the one beside the data; deploy.description)
    # a budget instead of a ratio (devices/deploy/recover.py): at most one is set
    speedup: str | None = None  # measured batch-1 speedup (ONNX Runtime here; predicted for other runtimes)
    macs_budget: str | None = None  # <= 1: fraction of dense MACs, else an absolute count (120M)
    params_budget: str | None = None
    latency_ms: str | None = None
    # recovery after pruning to a budget: None = the recovery recipe's value (toolchain.recovery.finetune.RECIPE,
    # the same recipe `medprune prune` and the recovery study use); with none of the loss/augmentation ones set,
    # deploy tries the recipe and then its pre-declared alternatives on val (recover.CANDIDATES)
    recover_epochs: int | None = None
    kd_weight: float | None = None
    ce_weight: float | None = None
    kd_temperature: float | None = None
    recover_augment: bool | None = None
    # a budget whose recovered model fails on val: package the best smaller budget passing on val (else exit 3)
    ship_best_passing: bool = False
    # val bounds simultaneous over the candidates the search judges (toolchain.lossless.SEARCH_AWARE_RULE)
    search_aware: bool = False

    def budget(self) -> dict | None:
        """``{"kind", "value"}`` of the one budget given, or None (ConfigError for two or a bad value)."""
        from toolchain.budget import one_budget

        b = one_budget(speedup=self.speedup, macs=self.macs_budget, params=self.params_budget,
                       latency_ms=self.latency_ms)
        return {"kind": b.kind, "value": b.value} if b else None

    def recovery(self):
        """The :class:`RecoveryConfig` a budget run recovers with: the recipe plus this run's overrides
        (None when recover-epochs is 0); ConfigError for a bad value."""
        from toolchain.recovery.command import recovery_config

        return recovery_config(self.recover_epochs, None, self.kd_temperature, self.kd_weight, self.ce_weight, 0,
                               "cpu", True, augment=self.recover_augment, seed=self.seed)

    def resolved(self) -> DeployConfig:
        """A validated copy with every default filled in; ConfigError/ModelError/CheckpointError otherwise."""
        from devices.profiles import load_profile
        from toolchain.models.registry import resolve_arch

        cfg = DeployConfig(**asdict(self))
        cfg.target = TARGET_ALIASES.get(cfg.target, cfg.target)
        profile = load_profile(cfg.target)
        if cfg.model is not None:
            resolve_arch(cfg.model)  # unknown names fail here, before any data is read
        cfg._check_split_fractions()
        if cfg.checkpoint:
            cfg._from_checkpoint()
        else:  # deploy trains its own dense model with this split
            from toolchain.data.splits import DEFAULT_VAL_FRACTION

            cfg.val_from_train = cfg.val_from_train or 0.0
            cfg.val_fraction = DEFAULT_VAL_FRACTION if cfg.val_fraction is None else cfg.val_fraction
        cfg.model = cfg.model or DEFAULT_MODEL
        cfg.data = cfg.data or DEFAULT_DATA
        cfg.img_size = cfg.img_size or DEFAULT_IMG_SIZE
        resolve_arch(cfg.model)
        cfg._check_recipe()
        cfg._check_ratio()
        if cfg.precision == "default":
            cfg.precision = profile.precision
        if cfg.precision not in PRECISIONS:
            raise ConfigError(f"unsupported precision {cfg.precision!r}: use {', '.join(PRECISIONS)} or default")
        if profile.runtime == "tensorrt" and cfg.precision == "int8":
            raise ConfigError(f"precision int8 is not offered for {profile.name} until TensorRT INT8 has been "
                              "measured on an NVIDIA GPU (make tensorrt-check); use fp16 or fp32")
        if cfg.round_to is None:
            cfg.round_to = 8 if profile.runtime == "tensorrt" else 0
        cfg._check_numbers()
        if cfg.budget() is not None and cfg.recovery() is None:
            raise ConfigError(f"recover-epochs must be >= 1 with a budget, got {cfg.recover_epochs}")
        if cfg.pool_per_class is not None:
            cfg.pool_per_class = max(cfg.pool_per_class, cfg.n_per_class)
        if cfg.name is not None and (not cfg.name or Path(cfg.name).name != cfg.name or cfg.name.startswith(".")):
            raise ConfigError(f"package name must be a plain file name, got {cfg.name!r}")
        cfg._check_outputs()
        if cfg.checkpoint:
            cfg._check_checkpoint_split()  # may read the data: after every check that does not
        if cfg.data_description is not None:
            from .description import read_description

            read_description(cfg.data_description)  # unreadable, empty or huge: one line now, not after training
        if cfg.sign_key is not None:
            from export.signing import load_private_key

            load_private_key(cfg.sign_key)  # a missing, loose or foreign key stops here, not after every stage
        return cfg

    # ---- checks (private: they compute on an already-copied config) ---------------------------------
    def _check_recipe(self) -> None:
        """Criterion, sampling and granularity come from their registries (the CLI help reads the same)."""
        from toolchain.importance import available
        from toolchain.removal import GRANULARITIES
        from toolchain.sampling import STRATEGIES

        for flag, value, choices in (("criterion", self.criterion, available()),
                                     ("sampling", self.sampling, STRATEGIES),
                                     ("granularity", self.granularity, GRANULARITIES)):
            if value not in choices:
                raise ConfigError(f"unknown {flag} {value!r}; choose from {', '.join(choices)}")

    def _check_ratio(self) -> None:
        raw = self.ratio
        self.ratio = str(raw).strip().lower()
        if self.ratio == "auto":
            return
        try:
            value = float(self.ratio)
        except ValueError:
            raise ConfigError(f"ratio must be 'auto' or a number in [0, 1), got {raw!r}") from None
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {value}")
        self.ratio = f"{value:.4f}"

    def _check_numbers(self) -> None:
        if self.round_to < 0:
            raise ConfigError(f"round_to must be >= 0, got {self.round_to}")
        for name in ("tolerance", "sens_tolerance", "qwk_tolerance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0 points, got {getattr(self, name)}")
        if self.n_per_class < 1:
            raise ConfigError(f"n-per-class must be >= 1, got {self.n_per_class}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.img_size < 8:
            raise ConfigError(f"img-size must be >= 8 pixels, got {self.img_size}")
        if self.bench_runs < 1 or self.samples < 1 or self.fidelity_images < 0:
            raise ConfigError("bench-runs and samples must be >= 1, fidelity-images >= 0")
        if not 0.0 < self.max_ratio < 1.0 or not 0.0 < self.search_margin <= 1.0:
            raise ConfigError("max-ratio must be in (0, 1) and search-margin in (0, 1]")

    def _check_split_fractions(self) -> None:
        """--val-from-train / --val-fraction: the same range and one-line error as `medprune train`."""
        from toolchain.data import check_split_fraction

        for flag, value in (("--val-fraction", self.val_fraction), ("--val-from-train", self.val_from_train)):
            if value is not None:
                check_split_fraction(flag, value)

    def _check_checkpoint_split(self) -> None:
        """With --checkpoint, a split flag must be the split it was trained with: the data is loaded the way the
        flags ask and the loaders' guard (toolchain.data.splits.check_split) judges it, so a val holding images
        the model trained on (or missing its selection images) stops here. Then both hold the checkpoint's."""
        from toolchain.data.splits import check_split, split_kwargs
        from toolchain.errors import DataError
        from toolchain.models.checkpoint import checkpoint_meta

        train_config = checkpoint_meta(self.checkpoint).get("train_config") or {}
        recorded = split_kwargs(train_config)
        asked = {k: float(v) for k, v in (("val_from_train", self.val_from_train),
                                          ("val_fraction", self.val_fraction)) if v is not None}
        if asked:
            from toolchain.data import load_dataset

            ds = load_dataset(self.data, self.data_dir, load_size=train_config.get("load_size"),
                              allow_missing_class=self.allow_missing_class
                              or bool(train_config.get("allow_missing_class")), **{**recorded, **asked})
            try:
                check_split(train_config, ds)
            except DataError as exc:
                raise ConfigError(f"{exc} (deploy judges a checkpoint on its own split: drop --val-from-train / "
                                  "--val-fraction or pass the values it was trained with)") from None
        self.val_from_train, self.val_fraction = recorded["val_from_train"], recorded["val_fraction"]

    def _check_outputs(self) -> None:
        """--out and the stage cache must be writable folders before any stage runs (OutputError, exit 2)."""
        from toolchain.atomic import ensure_writable_dir
        from toolchain.settings import cache_dir

        ensure_writable_dir(self.out, "--out")
        ensure_writable_dir(self.cache or cache_dir() / "deploy", "--cache")

    def _from_checkpoint(self) -> None:
        """Model, data and input size come from the checkpoint; explicit flags must agree with it."""
        from toolchain.models.checkpoint import checkpoint_meta, resolve_checkpoint
        from toolchain.models.registry import resolve_arch

        self.checkpoint = str(resolve_checkpoint(self.checkpoint))
        meta = checkpoint_meta(self.checkpoint)
        if meta.get("pruning"):
            raise ConfigError(f"{self.checkpoint} is already pruned; deploy starts from a dense checkpoint")
        tc = meta.get("train_config") or {}
        arch = meta.get("arch")
        if self.model is not None and resolve_arch(self.model) != arch:
            raise ConfigError(f"--model {self.model} does not match the checkpoint's architecture {arch}")
        size = int(meta.get("img_size") or 0)
        if self.img_size is not None and self.img_size != size:
            raise ConfigError(f"--img-size {self.img_size} does not match the checkpoint's input size {size}")
        self.model = self.model or tc.get("model") or arch
        self.img_size = size
        self.data = self.data or tc.get("data") or (meta.get("dataset") or {}).get("name")
        if tc.get("epochs"):
            self.epochs = int(tc["epochs"])
