"""Per-layer MACs and bytes moved, from an ONNX graph (shape inference at a concrete batch) or a torch
model (forward hooks). The benchmark reports use them for MAC ratios; ``devices.roofline`` turns them
into predicted latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import ModelError

# ops that move no data at run time (views, shape arithmetic) or that runtimes fuse into the op before them
FREE_OPS = {"Constant", "Identity", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Cast",
            "ConstantOfShape", "Range", "Expand"}
FUSED_AFTER = {"Relu", "Clip", "BatchNormalization", "LeakyRelu", "Sigmoid", "HardSigmoid"}
ONNX_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}



@dataclass
class LayerCost:
    name: str
    op: str
    macs: int
    bytes: int  # activations in + weights + activations out, at fp32

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _prod(shape) -> int:
    return int(np.prod([int(s) for s in shape])) if shape else 1


def onnx_layer_costs(path: str | Path, batch: int = 1) -> list[LayerCost]:
    """Per-node MACs and bytes of an ONNX graph at ``batch`` (dynamic batch axes set to it)."""
    import onnx
    from onnx import shape_inference

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read ONNX graph {path}: {exc}") from exc
    inits = {t.name: (list(t.dims), t.data_type) for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
        for d in dims[1:]:
            if not d.HasField("dim_value"):
                raise ModelError(f"{path}: input {inp.name!r} has a dynamic spatial axis; cannot count MACs")
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[list[int], int]] = dict(inits)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = ([d.dim_value for d in tt.shape.dim], tt.elem_type)

    def nbytes(name: str) -> int:
        if name not in shapes:
            return 0
        dims, elem = shapes[name]
        return _prod(dims) * ONNX_ELEM_BYTES.get(elem, 4)

    producers = {o: n.op_type for n in inferred.graph.node for o in n.output}
    costs = []
    for i, node in enumerate(inferred.graph.node):
        op = node.op_type
        if op in FREE_OPS:
            continue
        if op in FUSED_AFTER and node.input and producers.get(node.input[0]) in ("Conv", "Gemm", "MatMul", "Add"):
            continue
        macs = 0
        out = shapes.get(node.output[0], ([], 1))[0] if node.output else []
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in shapes:
            w = shapes[node.input[1]][0]
            if op == "Conv":
                macs = _prod(out) * _prod(w[1:])
            else:  # each input element scatters into Cout/g * k*k outputs
                macs = _prod(shapes.get(node.input[0], ([], 1))[0]) * _prod(w[1:])
        elif op == "Gemm" and out:
            a = shapes.get(node.input[0], ([], 1))[0]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[0] if trans_a else a[-1]
            macs = _prod(out) * int(k) if a else 0
        elif op == "MatMul" and out:
            a = shapes.get(node.input[0], ([], 1))[0]
            macs = _prod(out) * int(a[-1]) if a else 0
        moved = sum(nbytes(n) for n in node.input if n) + sum(nbytes(n) for n in node.output if n)
        costs.append(LayerCost(node.name or f"{op}_{i}", op, int(macs), int(moved)))
    if not costs:
        raise ModelError(f"{path}: no computable layers found")
    return costs


def torch_layer_costs(model, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-module MACs and bytes of a torch model on one forward pass of ``input_shape`` (N, C, H, W)."""
    import torch
    from torch import nn

    costs: list[LayerCost] = []
    hooks = []

    def numel_bytes(t) -> int:
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0] if inputs else None
            out = output if isinstance(output, torch.Tensor) else None
            weights = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
            macs = 0
            if isinstance(module, nn.Conv2d) and out is not None:
                macs = out.numel() * (module.in_channels // module.groups) * int(np.prod(module.kernel_size))
            elif isinstance(module, nn.Linear) and out is not None:
                macs = out.numel() * module.in_features
            elif _is_attention(module) and isinstance(x, torch.Tensor) and x.dim() == 3:
                b, n, c = x.shape  # the QK^T and attn@V matmuls (qkv and proj are hooked as Linear)
                macs = 2 * b * n * n * c
                costs.append(LayerCost(f"{name}.sdpa", "Attention", int(macs), int(2 * b * module.num_heads * n * n * 4
                                                                                  + 4 * numel_bytes(x))))
                return
            if isinstance(module, (nn.ReLU, nn.GELU, nn.Dropout, nn.Identity, nn.Flatten)) or not _is_leaf(module):
                return
            costs.append(LayerCost(name, type(module).__name__, int(macs),
                                   int(numel_bytes(x) + weights + numel_bytes(out))))
        return fn

    for name, module in model.named_modules():
        if _is_leaf(module) or _is_attention(module):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return costs


def _is_leaf(module) -> bool:
    return next(iter(module.children()), None) is None


def _is_attention(module) -> bool:
    return all(hasattr(module, a) for a in ("qkv", "proj", "num_heads"))


def layer_costs(model, batch: int = 1, input_chw: tuple[int, int, int] | None = None) -> list[LayerCost]:
    """Costs of an ONNX file, an OpenVINO IR with an ONNX sibling, or a torch module / checkpoint."""
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            if input_chw is None:
                raise ModelError("a torch module needs input_chw for the roofline model")
            return torch_layer_costs(model, (batch, *input_chw))
    except ImportError:
        pass
    path = Path(model)
    if path.suffix == ".onnx":
        return onnx_layer_costs(path, batch)
    if path.suffix == ".xml" and path.with_suffix(".onnx").exists():
        return onnx_layer_costs(path.with_suffix(".onnx"), batch)
    if path.suffix == ".safetensors":
        from toolchain.models import load_checkpoint

        module, meta = load_checkpoint(path)
        chw = input_chw or (int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
        return torch_layer_costs(module, (batch, *chw))
    raise ModelError(f"{path}: the roofline model needs an ONNX graph or a torch checkpoint")


def total_macs(costs: list[LayerCost]) -> int:
    return int(sum(c.macs for c in costs))
