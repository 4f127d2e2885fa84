"""``medprune deploy``: real data + a model name → a verified, tamper-evident bedside package.

The stages, in order (one module each, or one per related pair; :func:`deploy` in ``run.py`` wires them).
Every choice is made on train/val; from stage 2 on the test split is sealed (``holdout``) until stage 8:

1. train (``training``) — cached by ``toolchain.train``, or ``--checkpoint``;
2. reference, 3. importance (``scoring``) — reference images per class, every unit's score on them;
4. ratio (``ratio``) — a fixed ratio, or the largest passing the lossless rule on val (``toolchain.lossless``);
   with a budget, 4. budget + 5b. recover (``recover``) instead, judged by the same rule on val;
5. prune (``pruning``) — masks + physical removal, masked-vs-removed parity, metrics on val;
6. calibrate (``calibrate``) — temperature fit on val, folded into the classifier (``--no-calibrate``);
7. export (``export_bench``) — the target's runtime/precision, parity-verified on val;
8. test-report (``report``) — test read once: metrics with 95 % intervals and n, then the clinical gates
   (a failure is exit 3 with the numbers, and no package);
9. fidelity (``explain_fidelity``), 10. bench (``export_bench``) — reporting only;
11. package (``packaging``, with ``manifest`` + ``templates/model_card.md`` and ``jetson`` scripts).

Every cached stage is a :class:`~devices.deploy.stage.Stage`: its fields are its inputs and, with its
``version``, its cache key (``toolchain.pipeline``), so a rerun resumes. It lives in ``devices``
because it composes every earlier stage (data flows one way: toolchain → export → benchmarks → devices).

Reproducibility: the same seed and inputs give byte-identical model files, predict.py, samples,
MODEL_CARD.md, scripts and manifest.json *except* for what measures time on this machine. Those
numbers (latency, throughput, memory, roofline calibration) live only in ``reports/``; the manifest
lists the reports' checksums, so ``files["reports/…"]`` and ``manifest_sha256`` are the only manifest
fields that differ between two runs (and with them the tarball's bytes).
"""

from .config import (
    DEFAULT_DATA,
    DEFAULT_IMG_SIZE,
    DEFAULT_MODEL,
    TARGET_ALIASES,
    DeployConfig,
    DeployInterrupted,
)
from .export_bench import export_plan
from .manifest import git_commit, model_card
from .packaging import SAMPLE_TOLERANCE
from .run import deploy

__all__ = ["DEFAULT_DATA", "DEFAULT_IMG_SIZE", "DEFAULT_MODEL", "SAMPLE_TOLERANCE", "TARGET_ALIASES", "DeployConfig", "DeployInterrupted", "deploy", "export_plan", "git_commit",
           "model_card"]
