"""Benchmark MaskFeat target construction on this machine (not a test).

Times, with medians over repeats (the machine may be shared):
  * HOG per 224x224 RGB frame: our batched `HOGLayer` (both modes) on a batch of frames
    versus `skimage.feature.hog` called in a loop, and the ratio;
  * cube mask generation per clip (8x7x7 units, ratio 0.4), one clip and a batch;
  * target assembly for one 16x224^2 clip: `hog_targets` (1568 x 108) and `pixel_targets`.

    python scripts/benchmark_maskfeat_targets.py --threads 1        # CPU, one intra-op thread
    python scripts/benchmark_maskfeat_targets.py [--repeats 9] [--frames 16] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from skimage.feature import hog as skimage_hog

from pretrain.config import ScriptParser
from pretrain.hog import HOGLayer, hog_targets, pixel_targets
from pretrain.masking import CubeMaskGenerator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    return paired_median_seconds([fn], repeats, device)[0][0]


def paired_median_seconds(fns, repeats: int, device: torch.device, deadline: float | None = None):
    """Time each fn once per round, for `repeats` rounds (after a warm-up round), so
    that all of them see the same background load. -> (median seconds per fn, median
    over rounds of time(fns[0]) / time(fns[i]) per fn). With a deadline (a
    time.perf_counter() value), no round starts after it (one timed round at least)."""
    times = [[] for _ in fns]
    for round_ in range(repeats + 1):
        if round_ > 1 and deadline is not None and time.perf_counter() > deadline:
            break
        for fn, ts in zip(fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                ts.append(time.perf_counter() - start)
    medians = [statistics.median(ts) for ts in times]
    ratios = [statistics.median(a / b for a, b in zip(times[0], ts)) for ts in times]
    return medians, ratios


def build_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(doc=__doc__, script=__file__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--frames", type=int, default=16, help="frames per HOG batch")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    rows = []  # (what, time, unit, note)

    # HOG per frame: batched layer vs skimage loop over the same frames (float32 [0, 1]).
    frames = torch.rand(args.frames, 3, 224, 224, generator=g)
    images = [f.permute(1, 2, 0).numpy() for f in frames]  # (224, 224, 3) each

    def skimage_loop():
        for img in images:
            skimage_hog(img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                        channel_axis=-1, feature_vector=False)

    layers = [HOGLayer(mode=mode).to(device) for mode in ("maskfeat", "skimage")]
    frames_dev = frames.to(device)
    (t_sk, *t_ours), (_, *speedups) = paired_median_seconds(
        [skimage_loop] + [lambda layer=layer: layer(frames_dev) for layer in layers],
        args.repeats, device,
    )
    for layer, t, speedup in zip(layers, t_ours, speedups):
        rows.append((f"HOGLayer mode={layer.mode}, batch of {args.frames}",
                     t / args.frames * 1e3, "ms/frame", f"{speedup:.1f}x skimage"))
    rows.append(("skimage.feature.hog loop", t_sk / args.frames * 1e3, "ms/frame", "1.0x"))

    # Cube masks: one clip per call (data-loader style) and a batch of 64.
    masker = CubeMaskGenerator()
    for batch in (1, 64):
        t = median_seconds(lambda: masker(batch, g), args.repeats, torch.device("cpu")) / batch
        rows.append((f"CubeMaskGenerator 8x7x7, batch {batch}", t * 1e6, "us/clip", "cpu"))

    # Targets for one 16x224^2 clip.
    clip = torch.randn(1, 3, 16, 224, 224, generator=g).to(device)
    layer = HOGLayer().to(device)
    t = median_seconds(lambda: hog_targets(layer, clip, grid=(8, 14, 14)), args.repeats, device)
    rows.append(("hog_targets 16x224^2 -> (1, 1568, 108)", t * 1e3, "ms/clip", str(device)))
    t = median_seconds(lambda: pixel_targets(clip), args.repeats, device)
    rows.append(("pixel_targets 16x224^2 -> (1, 1568, 1536)", t * 1e3, "ms/clip", str(device)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"median of {args.repeats} (speedup: median of per-round ratios, same rounds)")
    print("| what | time | unit | note |")
    print("|---|---:|---|---|")
    for what, value, unit, note in rows:
        print(f"| {what} | {value:.3g} | {unit} | {note} |")


if __name__ == "__main__":
    main()
