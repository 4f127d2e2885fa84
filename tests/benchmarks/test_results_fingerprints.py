"""Each committed result file that names a checkpoint also names its weights sha256 (#14: "each result file
names the checkpoint fingerprint it came from"), so a number can be traced to the exact weights even after
the git-ignored training cache is gone.

Files written before their study recorded the sha256 are listed in ``LEGACY`` with where the fingerprint
can be found instead; the list may only shrink: a listed file that now carries a fingerprint fails the test
until it is removed from the list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FINGERPRINT_KEYS = ("checkpoint_sha256", "weights_sha256", "sha256", "source_checkpoint_sha256")
SHA256 = re.compile(r"[0-9a-f]{64}")
NOT_A_RESULT = {"headline.json"}  # the README table's index: its commands name checkpoints, its sources hold them

LEGACY = {
    "baselines.json": "written before baselines.summarize recorded weights_sha256; the CUDA checkpoints' sha256 are "
                      "in baselines_cpu.json's cited section (by cache folder: paper_grid.json, ece_study.json)",
    "baselines_cuda_run.json": "the CUDA run's own record (gpu_baselines.sh); same checkpoints as baselines.json",
    "criteria_cost.json": "written before criteria_cost recorded checkpoint_sha256; its three checkpoints are cited "
                          "with sha256 by recovery.json (same cache folders)",
    "deploy_runs.json": "written before deploy's summary carried checkpoint_sha256; the CUDA baselines are in "
                        "paper_grid.json; the ResNet50 SPEEDUP=3 run's checkpoint (cache folder cc8896e786c8) is "
                        "cited by no committed file",
    "dlb_check.json": "names its two 2-epoch checkpoints by their train command only",
    "export_quality.json": "written before export_quality recorded checkpoint_sha256; VGG19 baseline in paper_grid.json",
    "export_quality_resnet50_vit.json": "as export_quality.json (ResNet50 and ViT-B/16 baselines)",
    "recovery_schedule.json": "names its recovered students by path; the dense checkpoint is not named",
    "removal.json": "written before removal_parity recorded checkpoint_sha256; the baselines are in paper_grid.json",
    "res224.json": "its cpu_deploy section names the deployed checkpoint by path only (deploy summary predates "
                   "checkpoint_sha256); the rest uses untrained weights",
}


def _fingerprinted(doc) -> bool:
    if isinstance(doc, dict):
        return any(isinstance(doc.get(k), str) and SHA256.fullmatch(doc[k]) for k in FINGERPRINT_KEYS) or any(
            _fingerprinted(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_fingerprinted(v) for v in doc)
    return False


def _naming_a_checkpoint() -> dict[str, bool]:
    """``file name -> carries a fingerprint`` for every result JSON that names a ``.safetensors`` checkpoint."""
    out = {}
    for path in sorted(RESULTS.glob("*.json")):
        text = path.read_text()
        if path.name not in NOT_A_RESULT and ".safetensors" in text:
            out[path.name] = _fingerprinted(json.loads(text))
    return out


def test_every_result_naming_a_checkpoint_names_its_sha256():
    missing = sorted(name for name, ok in _naming_a_checkpoint().items() if not ok and name not in LEGACY)
    assert not missing, f"result files naming a checkpoint without its weights sha256: {missing}"


def test_the_legacy_list_only_shrinks():
    found = _naming_a_checkpoint()
    stale = sorted(name for name in LEGACY if found.get(name, True))
    assert not stale, f"these now carry a fingerprint (or are gone): remove them from LEGACY: {stale}"


@pytest.mark.parametrize(("doc", "expected"), [
    ({"checkpoint": "a/model.safetensors", "checkpoint_sha256": "ab" * 32}, True),
    ({"runs": [{"x": 1}, {"weights_sha256": "0" * 64}]}, True),
    ({"checkpoint": "a/model.safetensors", "sha256": "not-a-hash"}, False),
    ({"checkpoint": "a/model.safetensors", "dataset_fingerprint": "ab" * 32}, False),  # data, not weights
])
def test_fingerprint_detection(doc, expected):
    assert _fingerprinted(doc) is expected
