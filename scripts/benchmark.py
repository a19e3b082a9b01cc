"""Benchmark our `mvitv2_s_16x4` against torchvision's `mvit_v2_s` on the same input, in one process.

Both models get the same weights (`mvit.load_pretrained(ours, tv.state_dict())`); the script
prints the largest logit difference, then times forward (eval, no_grad) and forward+backward
(eval mode, so dropout / drop path are off in both) in interleaved rounds — every round runs
ours and torchvision back to back, alternating which goes first — so load from other
processes hits both alike. It reports medians, the ratio torchvision / ours, the FLOPs of one
pass (torch.utils.flop_counter, counted once per model), the achieved GFLOP/s and the fraction
of a measured matmul peak (a large `torch.mm` in the same dtype, timed in the same rounds).

    python scripts/benchmark.py                 # CPU fp32, 16x224², 2-3 minutes on 2 idle cores
    python scripts/benchmark.py --threads 1     # steadier on a CPU shared with other jobs
    python scripts/benchmark.py --device cuda --dtype bf16 --compile --batch 8 --fwd-batch 8

On CUDA, bf16 means autocast (weights stay fp32) and the timers are read after a synchronize.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import mvit
from pretrain.config import ScriptParser


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--fwd-batch", type=int, default=1, help="batch of the forward timing")
    p.add_argument("--batch", type=int, default=1, help="batch of the forward+backward timing")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs both models)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (more with --compile)")
    p.add_argument("--mm-size", type=int, default=2048, help="n of the n×n matmul that measures the peak")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------- timing helpers


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(args):
    if args.dtype == "bf16":
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(model, x, args) -> torch.Tensor:
    """One eval forward without autograd: x (B, 3, T, H, W) -> logits (B, classes)."""
    with torch.no_grad(), autocast(args):
        return model(x)


def forward_backward(model, x, args):
    """One forward + backward of a scalar made from the logits (eval mode: no dropout)."""
    model.zero_grad(set_to_none=True)
    with autocast(args):
        loss = model(x).float().square().mean()
    loss.backward()


def timed(fn, device: str) -> float:
    """Wall seconds of fn(), with the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                               transposed, _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch.utils.flop_counter's conv backward formula with the groups of the weight gradient.

    The stock formula counts the weight gradient as a dense conv (C_in·C_out per position), which
    for the depthwise pooling convs (groups = channels) overstates it by the group count: about
    100 GFLOP for torchvision and 420 for ours (we fold the heads into the groups) per backward,
    against ~4 real. Shapes arrive as lists (the counter's shape wrapper).
    """
    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:  # grad_input: a transposed conv with the (already grouped) weight
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # grad_weight: a conv of input and grad_out, one per group
        a, b = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(a), t(b), t(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(fn) -> int:
    fix = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=fix) as counter:
        fn()
    return counter.get_total_flops()


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo) and the core count."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return f"{name}, {os.cpu_count()} cores"


def torchvision_mvit_v2_s(frames: int, size: int) -> torch.nn.Module:
    """torchvision's mvit_v2_s built for frames×size² clips.

    mvit_v2_s() fixes spatial_size=(224, 224), temporal_size=16 in its call to the private
    builder `_mvit`, so for other sizes that call is intercepted to change the two sizes only.
    """
    from torchvision.models.video import mvit as tv_mvit
    if (frames, size) == (16, 224):
        return tv_mvit.mvit_v2_s()
    builder = tv_mvit._mvit

    def resized(**kwargs):
        return builder(**{**kwargs, "spatial_size": (size, size), "temporal_size": frames})

    tv_mvit._mvit = resized
    try:
        return tv_mvit.mvit_v2_s()
    finally:
        tv_mvit._mvit = builder


# ----------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    dev = args.device
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False

    # both built for the benchmarked clip size (torchvision's MViT only runs at its built size)
    tv = torchvision_mvit_v2_s(args.frames, args.size).eval()
    ours = mvit.create_model("mvitv2_s_16x4", input_size=(args.frames, args.size, args.size)).eval()
    report = mvit.load_pretrained(ours, tv.state_dict())
    assert not report.missing and not report.unexpected, report.summary()
    tv, ours = tv.to(dev), ours.to(dev)

    hw = (args.frames, args.size, args.size)
    x_fwd = torch.randn(args.fwd_batch, 3, *hw, device=dev)
    x_bwd = torch.randn(args.batch, 3, *hw, device=dev)
    where = torch.cuda.get_device_name() if dev == "cuda" else cpu_name()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {dev} ({where}), "
          f"threads {torch.get_num_threads()}, dtype {args.dtype}, compile {args.compile}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"input fwd {tuple(x_fwd.shape)}, fwd+bwd {tuple(x_bwd.shape)}")

    # --- identical outputs (eager fp32 first: the contract; then the benchmarked mode)
    fp32 = argparse.Namespace(**{**vars(args), "dtype": "fp32"})
    diff = (forward(ours, x_fwd, fp32) - forward(tv, x_fwd, fp32)).abs().max().item()
    print(f"max |Δlogits| eager fp32: {diff:.2e}")

    # --- FLOPs of one pass, counted on the eager models (the counter sees aten ops)
    flops = {}
    for name, m in (("torchvision", tv), ("ours", ours)):
        flops[name, "fwd"] = count_flops(lambda: forward(m, x_fwd, args))
        if not args.no_backward:
            flops[name, "fwd+bwd"] = count_flops(lambda: forward_backward(m, x_bwd, args))
    # ours counts more than torchvision: the rel-pos bias rides in the attention's dot products
    # (head width c + K instead of c) and the fused backward recomputes the attention matrix
    print("GFLOP executed per pass: " + ", ".join(f"{n} {p} {f / 1e9:.1f}" for (n, p), f in flops.items()))

    models = {"torchvision": tv, "ours": ours}
    if args.compile:
        models = {n: torch.compile(m) for n, m in models.items()}
        args.warmup = max(args.warmup, 3)
    if args.dtype != "fp32" or args.compile:
        diff = (forward(models["ours"], x_fwd, args).float()
                - forward(models["torchvision"], x_fwd, args).float()).abs().max().item()
        print(f"max |Δlogits| {args.dtype}{' compiled' if args.compile else ''}: {diff:.2e}")

    # --- matmul peak in the benchmarked dtype (autocast's matmul dtype)
    n = args.mm_size
    mm_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=mm_dtype), torch.randn(n, n, device=dev, dtype=mm_dtype)
    mm_reps = 5 if dev == "cpu" else 50

    def matmul():
        for _ in range(mm_reps):
            torch.mm(a, b)

    # --- interleaved rounds: every round times each model once per pass, order alternating
    passes = {"fwd": lambda m: forward(m, x_fwd, args)}
    if not args.no_backward:
        passes["fwd+bwd"] = lambda m: forward_backward(m, x_bwd, args)
    times = {(n, p): [] for n in models for p in passes}
    mm_times = []
    for r in range(args.warmup + args.repeats):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        mm_t = timed(matmul, dev) / mm_reps
        for p, run in passes.items():
            for name in order:
                t = timed(lambda: run(models[name]), dev)
                if r >= args.warmup:
                    times[name, p].append(t)
        if r >= args.warmup:
            mm_times.append(mm_t)
            print(f"round {r - args.warmup + 1}/{args.repeats}: " + ", ".join(
                f"{n} {p} {v[-1] * 1e3:.0f} ms" for (n, p), v in times.items()), flush=True)

    peak = 2 * n ** 3 / statistics.median(mm_times)
    print(f"\nmatmul peak ({n}² {args.dtype} torch.mm, median): {peak / 1e9:.1f} GFLOP/s; "
          f"load average now {os.getloadavg()[0]:.1f}")
    # speedup: ratio of the medians; in brackets the median and range of the per-round ratios
    # (each round times both models back to back, so its ratio sees the same machine load).
    # Achieved rate = the model's FLOPs (torchvision's count: the plain MViTv2 math) / time, for
    # both; ours executes somewhat more (its attention runs with a wider head, see above).
    print("\n| pass | batch | torchvision ms | ours ms | speedup (tv/ours) [per round] | model GFLOP "
          "| torchvision GFLOP/s (% peak) | ours GFLOP/s (% peak) |")
    print("|---|---|---|---|---|---|---|---|")
    for p in passes:
        med = {name: statistics.median(times[name, p]) for name in models}
        ratios = [a / b for a, b in zip(times["torchvision", p], times["ours", p])]
        batch = args.fwd_batch if p == "fwd" else args.batch
        work = flops["torchvision", p]
        cells = [f"{work / med[n] / 1e9:.1f} ({100 * work / med[n] / peak:.0f}%)" for n in models]
        print(f"| {p} | {batch} | {med['torchvision'] * 1e3:.0f} | {med['ours'] * 1e3:.0f} "
              f"| {med['torchvision'] / med['ours']:.2f}× [{statistics.median(ratios):.2f}, "
              f"{min(ratios):.2f}–{max(ratios):.2f}] | {work / 1e9:.1f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
