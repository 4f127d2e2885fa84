"""What a paper-grid sweep is asked to do: the axes (:class:`Grid`) and everything else that changes a
cell's result (:class:`Sizes`, all of it part of the cell key). Criteria default to the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolchain.errors import ConfigError

SCHEMA = "medprune.paper_grid/1"

DATASETS = ("pneumoniamnist", "breastmnist", "chest_xray_224")
MODELS = ("vgg19", "resnet50", "vit_b16")
SAMPLINGS = ("confidence", "random", "clustering")
RATIOS = (0.15, 0.3, 0.5, 0.7)
# The paper's criteria first, in the order of its tables (and of the recorded runs' keys); a criterion
# registered later joins the default grid after them by itself.
PAPER_CRITERIA = ("lrp", "dlb", "ig", "magnitude", "random", "taylor")
# chest_xray_224 is 224 px JPEG; the CPU-scale study loads it small (the models train at 32 px anyway)
DEFAULT_LOAD_SIZE = {"chest_xray_224": 64}


def default_criteria() -> list[str]:
    from toolchain.importance import available

    known = available()
    return [c for c in PAPER_CRITERIA if c in known] + [c for c in known if c not in PAPER_CRITERIA]



@dataclass
class Sizes:
    """Everything besides the grid axes that changes a cell's result (all of it is in the cell key)."""

    n_per_class: int = 10
    pool_per_class: int | None = 300  # candidates per class for confidence/clustering (None: whole train split)
    fidelity_images: int = 16
    figure_images: int = 4
    top_fraction: float = 0.1
    test_limit: int | None = None  # stratified test subset (None: the whole split)
    val_limit: int | None = 256  # the lossless search evaluates val ~7 times per cell
    # prune_eval.find_lossless: accuracy may drop <= tolerance points and no class sensitivity by more
    # than sens_tolerance points (on val); a coarse scan then bisection on a resolution grid. At CPU
    # scale a 0.25 scan + 0.05 grid (~7 val evaluations) replaces the library's 0.1/0.01 (~14): the
    # paper's claims are 10-point ranges.
    lossless_tolerance: float = 1.0
    lossless_sens_tolerance: float = 2.0
    lossless_resolution: float = 0.05
    lossless_coarse_step: float = 0.25
    scope: str = "global"
    normalize: str | None = None
    batch_size: int = 128
    seed: int = 0


@dataclass
class Grid:
    datasets: list[str] = field(default_factory=lambda: ["pneumoniamnist"])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    criteria: list[str] = field(default_factory=default_criteria)
    samplings: list[str] = field(default_factory=lambda: list(SAMPLINGS))
    ratios: list[float] = field(default_factory=lambda: list(RATIOS))
    sizes: Sizes = field(default_factory=Sizes)
    load_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LOAD_SIZE))
    checkpoints: dict[str, str] = field(default_factory=dict)  # "dataset:model" -> checkpoint path
    train_subset: int | None = 2000  # train-split cap for checkpoints the grid has to train itself
    train: bool = True  # False: pairs without a checkpoint are reported as not run
    # IG's default "layer" path runs one IG per unit layer (53 for ResNet50): hours on CPU. The "input"
    # path (layer conductance along the image path) scores every layer in n_steps passes.
    criterion_options: dict[str, dict] = field(default_factory=lambda: {"ig": {"path": "input"}})
    data_dir: str | None = None

    def validate(self) -> None:
        from toolchain.importance import available, get_criterion

        known = set(available())
        for c in self.criteria:
            if c not in known:
                raise ConfigError(f"unknown criterion {c!r}; choose from {', '.join(sorted(known))}")
            get_criterion(c, **self.criterion_options.get(c, {}))  # bad options fail before any work
        for s in self.samplings:
            if s not in SAMPLINGS:
                raise ConfigError(f"unknown sampling {s!r}; choose from {', '.join(SAMPLINGS)}")
        for r in self.ratios:
            if not 0 < r < 1:
                raise ConfigError(f"pruning ratios must lie in (0, 1), got {r}")
        if not (self.datasets and self.models and self.criteria and self.samplings):
            raise ConfigError("every grid axis needs at least one value")
