"""One MaskFeat pretraining step: clips/s, peak memory, FLOP/s, and the share of HOG + masking.

    python scripts/benchmark_pretrain_step.py                      # the demo config on CPU
    python scripts/benchmark_pretrain_step.py --model mvitv2_s_16x4_maskfeat --frames 16 --crop 224 \
        --batch 8 --device cuda --dtype bf16 [--compile]           # MaskFeat-S 16x4 on a GPU, with MFU

A step = masks + HOG targets + forward + backward + AdamW update on a batch of random clips
(data loading is measured separately by scripts/benchmark_data.py). Timings are medians
over --repeats steps after --warmup steps. --peak-tflops sets the device's dense peak for
model FLOP utilization (default: 989 for bf16 on an H100/H200 SXM; on CPU we measure an
fp32 matmul peak instead).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mvit  # noqa: E402
from pretrain.maskfeat import MaskFeat  # noqa: E402
from pretrain.runtime import OptimConfig, make_optimizer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(device, dtype, n=2048, repeats=10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, 2, repeats)
    return 2 * n ** 3 / t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mvitv2_demo_8x2_maskfeat")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    size = (args.frames, args.crop, args.crop)
    encoder = mvit.create_model(args.model, pretraining=True, input_size=size)
    task = MaskFeat(encoder, size).to(device)
    if args.compile:
        encoder.compile()
    optimizer = make_optimizer(task, OptimConfig(), lr=1e-4)
    video = torch.randn(args.batch, 3, *size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step():
        with autocast:
            loss, _ = task({"video": video})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def targets_and_masks():
        task.make_masks(args.batch, device)
        task.targets(video)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_step = timed(step, device, args.warmup, args.repeats)
    t_aux = timed(targets_and_masks, device, 1, args.repeats)
    t_mask = timed(lambda: task.make_masks(args.batch, device), device, 1, args.repeats)

    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        peak_mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (allocated)"
        peak = (args.peak_tflops or 989.0) * 1e12
        peak_note = f"{peak / 1e12:.0f} TFLOP/s nominal {args.dtype}"
    else:
        peak_mem = f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20:.2f} GiB (RSS growth)"
        peak = matmul_peak(device, torch.float32)
        peak_note = f"{peak / 1e9:.0f} GFLOP/s measured fp32 matmul (2048²)"

    print(f"model {args.model}, clips {args.batch}×3×{args.frames}×{args.crop}², {device}, {args.dtype}"
          f"{', compiled' if args.compile else ''}, {torch.get_num_threads()} threads")
    print("| measure | value |\n|---|---|")
    print(f"| step time (median of {args.repeats}) | {t_step * 1e3:.0f} ms |")
    print(f"| clips/s | {args.batch / t_step:.2f} |")
    print(f"| peak memory | {peak_mem} |")
    print(f"| model FLOPs per step | {flops / 1e9:.1f} GFLOP |")
    print(f"| achieved | {flops / t_step / 1e9:.1f} GFLOP/s = {100 * flops / t_step / peak:.1f} % of {peak_note} |")
    print(f"| HOG targets + masks per step | {t_aux * 1e3:.1f} ms = {100 * t_aux / t_step:.2f} % of the step |")
    print(f"| of which masks | {t_mask * 1e3:.2f} ms ({t_mask / args.batch * 1e6:.0f} µs per clip) |")


if __name__ == "__main__":
    main()
