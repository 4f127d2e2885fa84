"""A sidecar must tell the truth: no weights_sha256, swapped or miscounted class names and a wrong input
size are refused at load, as one line and exit 2 through the CLI (export never sees them)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.toolchain.test_cli_foundation import assert_one_line_error, run
from toolchain.errors import CheckpointError
from toolchain.models import build_model, load_checkpoint, save_checkpoint
from toolchain.models.checkpoint import sha256_file

META = {"class_names": ["normal", "pneumonia"]}


@pytest.fixture(autouse=True)
def _env(cli_env):
    pass


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg19", 2, in_chans=1, img_size=16, cfg=[4, "M", 8, "M"], mlp_ratio=0.01).eval()
    return save_checkpoint(tmp_path / "m.safetensors", model, META)


def _edit_sidecar(weights, edit):
    side = weights.with_suffix(".json")
    doc = json.loads(side.read_text())
    edit(doc)
    side.write_text(json.dumps(doc))


def _strip_header(weights):
    """A checkpoint saved before class names and input size were bound into the weights header."""
    save_file(load_file(str(weights)), str(weights))
    _edit_sidecar(weights, lambda d: d.__setitem__("weights_sha256", sha256_file(weights)))


def _refused(path, capsys, *needles):
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    for cmd in (["info", "--checkpoint", str(path)], ["export", "--checkpoint", str(path), "--no-verify",
                                                       "--out", str(path.parent / "dist")]):
        code, _, err = run(cmd, capsys)
        assert code == 2, (cmd[0], err)
        assert_one_line_error(code, err, *needles)
    assert not (path.parent / "dist").exists()


def test_intact_checkpoint_loads(ckpt):
    model, meta = load_checkpoint(ckpt)
    assert meta["class_names"] == META["class_names"] and model(torch.zeros(1, 1, 16, 16)).shape == (1, 2)


def test_missing_weights_sha256_is_refused(ckpt, capsys):
    _edit_sidecar(ckpt, lambda d: d.pop("weights_sha256"))
    _refused(ckpt, capsys, "no weights_sha256")


def test_swapped_class_names_are_refused(ckpt, capsys):
    _edit_sidecar(ckpt, lambda d: d["meta"].__setitem__("class_names", ["pneumonia", "normal"]))
    _refused(ckpt, capsys, "class_names", "sidecar was edited")


def test_class_names_must_match_the_classifier(ckpt, capsys):
    _strip_header(ckpt)  # even without the bound copy, the count is checked against the outputs
    _edit_sidecar(ckpt, lambda d: d["meta"].__setitem__("class_names", ["normal", "pneumonia", "covid"]))
    _refused(ckpt, capsys, "3 classes", "2 outputs")
    _edit_sidecar(ckpt, lambda d: d["meta"].__setitem__("class_names", ["normal", "normal"]))
    _refused(ckpt, capsys, "repeat normal")


def test_wrong_input_size_is_exit_2_not_a_crash(ckpt, capsys):
    _edit_sidecar(ckpt, lambda d: d["meta"].__setitem__("img_size", 2))
    _refused(ckpt, capsys, "img_size")  # caught by the bound copy in the weights header
    _strip_header(ckpt)
    _refused(ckpt, capsys, "cannot run an image of its recorded input size (1, 2, 2)")
    _edit_sidecar(ckpt, lambda d: d["meta"].__setitem__("img_size", "large"))
    _refused(ckpt, capsys, "img_size must be integers")
