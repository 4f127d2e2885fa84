"""Cost of DL-Backtrace scoring relative to one forward+backward pass of the same model.

    medprune study dlb_cost --arch vgg19 --img-size 32 --samples 20

Prints JSON: median seconds over ``--repeats`` of (a) scoring ``--samples`` images with the ``dlb``
criterion (the whole call: the model set up in place, no deep copy), (b) one forward+backward over the same batch with frozen parameters
(input gradient only, what gradient criteria pay), (c) one forward+backward with parameter gradients
(a training step without the optimiser), and the ratios a/b and a/c. Random weights and inputs: the
cost does not depend on them. Not interleaved: the committed DLB cost is ``lrp_cost --parts dlb``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch

from .registry import StudyParser, command_line, study


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@study("dlb_cost", outputs=())
def main(argv: list[str] | None = None) -> dict:
    import timm

    from toolchain.importance import get_criterion
    from toolchain.units import find_unit_layers

    ap = StudyParser("dlb_cost", __doc__)
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.arch, num_classes=2, in_chans=1).eval()
    x = torch.randn(args.samples, 1, args.img_size, args.img_size)
    layers = find_unit_layers(model)
    criterion = get_criterion("dlb", batch_size=args.batch_size)

    def score():
        criterion(model, x, None, layers)

    def fwd_bwd(param_grads: bool):
        for p in model.parameters():
            p.requires_grad_(param_grads)
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out.gather(1, out.detach().argmax(1, keepdim=True)).sum().backward()
        model.zero_grad(set_to_none=True)

    score()  # warm-up (allocator, lazy init)
    fwd_bwd(False)
    t_score = _median_time(score, args.repeats)
    t_frozen = _median_time(lambda: fwd_bwd(False), args.repeats)
    t_train = _median_time(lambda: fwd_bwd(True), args.repeats)
    result = {
        "command": command_line("dlb_cost", argv),
        "arch": args.arch,
        "img_size": args.img_size,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "dlb_score_s": round(t_score, 3),
        "fwd_bwd_frozen_s": round(t_frozen, 3),
        "fwd_bwd_param_grads_s": round(t_train, 3),
        "ratio_vs_frozen": round(t_score / t_frozen, 2),
        "ratio_vs_param_grads": round(t_score / t_train, 2),
    }
    print(json.dumps(result, indent=2))
    return result
