"""One MaskFeat or MAE pretraining step: clips/s, peak memory, FLOP/s, and the share of targets + masking.

    python scripts/benchmark_pretrain_step.py                      # the demo config on CPU
    python scripts/benchmark_pretrain_step.py --model mvitv2_s_16x4_maskfeat --frames 16 --crop 224 \
        --batch 8 --device cuda --dtype bf16 [--compile]           # MaskFeat-S 16x4 on a GPU, with MFU
    python scripts/benchmark_pretrain_step.py --task mae --model vit_b_16x4 --frames 16 --crop 224
    python scripts/benchmark_pretrain_step.py --compare --depth 4  # MAE at 90 % vs MaskFeat, same ViT, per clip

--compare runs both tasks on one ViT (--model, --depth blocks, its width): MaskFeat (every token through
the encoder, a mask token for the masked ones, HOG targets) and MAE (the visible 10 % through the
encoder, the reference decoder of 4 blocks x 512, pixel targets), and prints time and FLOPs per clip,
their ratio, and where MAE's FLOPs go (encoder, decoder + head).

A step = forward + HOG targets + backward + AdamW update on a batch of random clips with
masks made beforehand, as the loader's workers make them in training (data loading is
measured separately by scripts/benchmark_data.py; the masks' worker-side cost is reported).
Timings are medians over --repeats steps after --warmup steps. FLOPs are counted once on the
eager model (scripts/benchmark.py's counter, depthwise-conv backward corrected). --peak-tflops
sets the device's dense peak for model FLOP utilization (default: 989 for bf16 on an H100/H200
SXM; on CPU we measure an fp32 matmul peak instead).
"""
from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mvit  # noqa: E402
from benchmark import count_flops  # noqa: E402  (scripts/benchmark.py, a sibling script)
from pretrain.config import ScriptParser  # noqa: E402
from pretrain.maskfeat import MaskedModeling, MaskFeat  # noqa: E402
from pretrain.runtime import OptimConfig, make_optimizer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, repeats, deadline: float | None = None):
    """Median seconds of fn() over `repeats` calls after `warmup` calls; with a deadline
    (a time.perf_counter() value), stops repeating once it has passed (one call at least)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return statistics.median(times)


def matmul_peak(device, dtype, n=2048, repeats=10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, 2, repeats)
    return 2 * n ** 3 / t


def device_peak(device, dtype: str, peak_tflops: float | None = None, mm_size: int = 2048) -> tuple[float, str]:
    """(FLOP/s, what it is) the MFU is taken against: the nominal dense peak on CUDA, a
    measured fp32 matmul on CPU."""
    if device.type == "cuda":
        peak = (peak_tflops or 989.0) * 1e12
        return peak, f"{peak / 1e12:.0f} TFLOP/s nominal {dtype}"
    peak = matmul_peak(device, torch.float32, n=mm_size)
    return peak, f"{peak / 1e9:.0f} GFLOP/s measured fp32 matmul ({mm_size}²)"


def build_task(model: str, size: tuple[int, int, int], task: str = "maskfeat", **arch) -> MaskFeat:
    """The masked-modeling task on `model`'s pretraining form for (T, H, W) clips; arch: MViTConfig
    overrides. task "maskfeat": the reference MaskFeat (cube masks of 1x8x8-token units at 0.4, HOG; on a
    ViT one-token units); "mae": MAE at 90 % (random tokens, the reference decoder 4 x 512, pixels)."""
    if task == "mae":
        encoder = mvit.create_model(model, pretraining="mae", input_size=size, **arch)
        return MaskedModeling(encoder, size, encoder_mode="drop", mask_ratio=0.9, mask_mode="random",
                              targets=("pixel",))
    encoder = mvit.create_model(model, pretraining=True, input_size=size, **arch)
    if encoder.cfg.plain:  # a ViT: 16 px tokens, so mask units of one token (SlowFast in1k_VIT_*_MaskFeat_PT)
        return MaskedModeling(encoder, size, mask_ratio=0.4, mask_mode="cube", mask_unit=(1, 1, 1))
    return MaskFeat(encoder, size)


def measure_step(task: MaskFeat, batch: int, device, *, dtype: str = "fp32", compile: bool = False,
                 warmup: int = 2, repeats: int = 5, deadline: float | None = None) -> dict:
    """Time training steps of `task` (already on `device`) on random (batch, 3, T, H, W) clips.

    -> seconds (step, first step incl. any compile, HOG targets, masks made by a loader worker
    for one batch), model FLOPs per step, and peak memory: CUDA max allocated, or on CPU the
    process's peak RSS (ru_maxrss) and its growth during the measurement.
    """
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    video = torch.randn(batch, 3, *task.input_size, device=device)
    masks = itertools.cycle([task.masker(batch).to(device) for _ in range(4)])  # as the loader delivers them
    optimizer = make_optimizer(task, OptimConfig(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        with autocast:
            loss, _ = task({"video": video, "mask": next(masks)})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = count_flops(step)  # on the eager model: the counter sees aten ops
    if compile:
        task.encoder.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = dict(flops=flops, first_step_s=timed(step, device, 0, 1))
    out["step_s"] = timed(step, device, max(0, warmup - 1), repeats, deadline)
    out["targets_s"] = timed(lambda: task.targets(video), device, 1, repeats, deadline)
    out["mask_s"] = timed(lambda: task.masker(batch), torch.device("cpu"), 1, repeats, deadline)
    if device.type == "cuda":
        out["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        out["rss_growth_bytes"] = out["rss_peak_bytes"] - rss0
    return out


def compare(args, device) -> None:
    """MAE at 90 % vs MaskFeat on the same ViT: time and FLOPs per clip, and MAE's FLOPs by part."""
    size = (args.frames, args.crop, args.crop)
    arch = {"depths": (args.depth,)} if args.depth else {}
    rows = {}
    for kind in ("maskfeat", "mae"):
        torch.manual_seed(0)
        task = build_task(args.model, size, kind, **arch).to(device)
        r = measure_step(task, args.batch, device, dtype=args.dtype, warmup=args.warmup, repeats=args.repeats)
        video = torch.randn(args.batch, 3, *size, device=device)
        units = task.masker(args.batch).to(device)
        if kind == "mae":  # forward FLOPs of the encoder alone (on the visible tokens), and of the whole step
            with torch.no_grad():
                r["encoder_fwd_flops"] = count_flops(lambda: task.forward_visible(video, units))
                r["fwd_flops"] = count_flops(lambda: task(dict(video=video, mask=units)))
        else:
            with torch.no_grad():
                r["encoder_fwd_flops"] = count_flops(lambda: task.forward_encoder(video, units))
                r["fwd_flops"] = count_flops(lambda: task(dict(video=video, mask=units)))
        rows[kind] = r
    b = args.batch
    mf, mae = rows["maskfeat"], rows["mae"]
    print(f"ViT {args.model} x {args.depth or 'all'} blocks, clips {b}×3×{args.frames}×{args.crop}², {device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads; MAE decoder 4×512")
    print("| per clip | MaskFeat (all tokens, HOG) | MAE 90 % (visible tokens + decoder, pixels) | MaskFeat / MAE |")
    print("|---|---|---|---|")
    print(f"| step time | {mf['step_s'] / b * 1e3:.0f} ms | {mae['step_s'] / b * 1e3:.0f} ms | "
          f"{mf['step_s'] / mae['step_s']:.2f}× |")
    print(f"| step FLOPs | {mf['flops'] / b / 1e9:.1f} G | {mae['flops'] / b / 1e9:.1f} G | "
          f"{mf['flops'] / mae['flops']:.2f}× |")
    print(f"| encoder forward FLOPs | {mf['encoder_fwd_flops'] / b / 1e9:.2f} G | "
          f"{mae['encoder_fwd_flops'] / b / 1e9:.2f} G | {mf['encoder_fwd_flops'] / mae['encoder_fwd_flops']:.2f}× |")
    rest = mae["fwd_flops"] - mae["encoder_fwd_flops"]
    print(f"| MAE forward FLOPs outside the encoder (decoder, head, loss) | | {rest / b / 1e9:.2f} G = "
          f"{100 * rest / mae['fwd_flops']:.0f} % of its forward | |")
    print(f"| targets + masks (time) | {(mf['targets_s'] + mf['mask_s']) / b * 1e3:.1f} ms | "
          f"{(mae['targets_s'] + mae['mask_s']) / b * 1e3:.1f} ms | |")


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
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
    p.add_argument("--task", default="maskfeat", choices=["maskfeat", "mae"])
    p.add_argument("--compare", action="store_true", help="MAE at 90 %% vs MaskFeat per clip on one ViT")
    p.add_argument("--depth", type=int, default=0, help="--compare: encoder blocks (0: the model's)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.compare:
        if args.model == "mvitv2_demo_8x2_maskfeat":
            args.model = "vit_b_16x4"
        return compare(args, device)

    task = build_task(args.model, (args.frames, args.crop, args.crop), args.task).to(device)
    r = measure_step(task, args.batch, device, dtype=args.dtype, compile=args.compile, warmup=args.warmup,
                     repeats=args.repeats)
    t_step, t_aux, t_mask, flops = r["step_s"], r["targets_s"] + r["mask_s"], r["mask_s"], r["flops"]
    if device.type == "cuda":
        peak_mem = f"{r['max_allocated_bytes'] / 2**30:.2f} GiB (allocated)"
    else:
        peak_mem = f"{r['rss_growth_bytes'] / 2**30:.2f} GiB (RSS growth)"
    peak, peak_note = device_peak(device, args.dtype, args.peak_tflops)

    print(f"model {args.model}, clips {args.batch}×3×{args.frames}×{args.crop}², {device}, {args.dtype}"
          f"{', compiled' if args.compile else ''}, {torch.get_num_threads()} threads")
    print("| measure | value |\n|---|---|")
    print(f"| step time (median of {args.repeats}) | {t_step * 1e3:.0f} ms |")
    print(f"| clips/s | {args.batch / t_step:.2f} |")
    print(f"| peak memory | {peak_mem} |")
    print(f"| model FLOPs per step | {flops / 1e9:.1f} GFLOP |")
    print(f"| achieved | {flops / t_step / 1e9:.1f} GFLOP/s = {100 * flops / t_step / peak:.1f} % of {peak_note} |")
    print(f"| targets + masks per step | {t_aux * 1e3:.1f} ms = {100 * t_aux / t_step:.2f} % of the step |")
    print(f"| of which masks | {t_mask * 1e3:.2f} ms ({t_mask / args.batch * 1e6:.0f} µs per clip) |")


if __name__ == "__main__":
    main()
