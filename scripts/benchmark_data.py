"""Clips per CPU-second of the training loader, per recipe and per speed lever.

    python scripts/benchmark_data.py                        # per-recipe table, ~10 minutes on 2 busy cores
    python scripts/benchmark_data.py --repeats 7 --out bench.json
    python scripts/benchmark_data.py --vs-raw               # the loader vs plain PyAV decoding (below)

Per recipe (default). Synthetic sources (textured moving shapes with grain, 30 fps, 10 s,
x264's default long GOP) are turned into shards by the project's own writer
(videodata.write_shards) in several kinds, all from the same sources in the same run:

    today        write_shards' defaults: short side 320, GOP 16, x264's adaptive B-frames, CABAC
    ref4         + ref_stride=4: every 4th frame a reference, the 3 between non-reference B-frames
    cavlc        + cavlc: CAVLC entropy coding instead of CABAC
    ref4+cavlc   both
    ... 256      the same at short side 256

Each recipe's loader is build_train_loader with the data settings of its config
(configs/pretrain/k400_mvitv2_s_16x4_maskfeat.yaml with its cube masks made in the loader,
configs/finetune/k400_mvitv2_s_16x4_maskfeat.yaml with RandAugment, random erasing and
repeats 2, configs/finetune/ssv2_mvitv2_s_16x4_maskfeat.yaml with segment sampling) and
its batch size (4 clips). The MAE row is a model of the MAE-ST recipe, which has no config
on this branch: MaskFeat's data settings with repeats 4 (SlowFast k400_VIT_B_16x4_MAE_PT:
TRAIN_CROP_NUM_TEMPORAL 4) and no masks from the loader (MAE draws them in the model).
"today's loader" decodes every frame from the keyframe before a clip to its last frame
(skip_unused=False) and normalizes to float on the loader's core; the other rows say which
levers they turn on: skipping unused non-reference frames, the shard kind, clips started on
the reference grid (align_starts), and uint8 clips (normalize=False: the float conversion
and normalization move to the training device, which this CPU measurement does not time).

Every row runs in this process with num_workers=0 and one torch thread, so the process's
CPU time (time.process_time: user + system, all threads) is the whole loader's cost:
clips per CPU-second = clips per second per core. The rows are measured interleaved, one
after the other in each of --repeats rounds, and the table gives medians (min, max) over
the rounds; the CPU rate is stable on a machine shared with other jobs, the wall rate not.
Cores per GPU = a GPU's training clips/s from a FLOP model (not a measurement: --peak-tflops
dense bf16 at --mfu, training = 3 x forward FLOPs; see GPU_MODELS) / clips per CPU-second.

--vs-raw: the earlier comparison, measured side by side in one process and one thread on the
same clip positions:

    raw source            plain PyAV decode of the clips from the source files (long
                          GOP: x264's default keyframe interval, 250), seek + decode + RGB
    raw re-encoded        the same from the re-encoded shard bytes (GOP 16)
    loader, decode only   our training pipeline (tar streaming, resampling, shuffle buffer,
                          clip sampling, decoding, batching) without augmentation: the
                          like-for-like comparison with raw decoding
    loader                build_train_loader as training uses it: + random resized crop
                          to 224, flip, normalization to float
    "--copy" rows         the same on shards that keep the source bytes

Sources are synthetic at the re-encoding resolution (short side 320); real footage decodes
at a different speed per frame (its bitrate sets the entropy decoding's share), which moves
the absolute numbers more than the ratios.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import videodata.pipeline  # noqa: E402
from pretrain.config import ScriptParser  # noqa: E402
from videodata import build_train_loader, decode_frames, write_shards, write_synthetic_videos  # noqa: E402
from videodata.pipeline import TrainClips  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def raw_decode(source, indices, fps) -> np.ndarray:
    """Plain PyAV: open, seek to the keyframe before the clip, decode forward, RGB.
    (T, H, W, 3) uint8. Written independently of videodata.decode on purpose."""
    container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    tb = float(stream.time_base)
    container.seek(int(max(0, indices[0] - 0.5) / fps / tb), stream=stream, backward=True)
    wanted, out, reformatter = set(indices), {}, VideoReformatter()
    for frame in container.decode(stream):
        i = round(frame.pts * tb * fps)
        if i in wanted:
            out[i] = reformatter.reformat(frame, format="rgb24").to_ndarray()
        if i >= indices[-1]:
            break
    container.close()
    return np.stack([out[i] for i in indices])


def shard_bytes(shard_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """{video id: (video bytes, meta)} from every shard in a folder."""
    out = {}
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[:-5]
                video = next(v for n, v in members.items() if n.startswith(key + ".") and n != name)
                out[meta["id"]] = (video, meta)
    return out


class Timer:
    """Wall-clock and CPU time of this process (one thread), so that a busy shared machine
    slows the wall-clock rate of every row alike while the CPU rate stays comparable."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_loader(loader_iter, num_batches: int):
    """(Timer, clips, [(video id, frame indices), ...]) over the next `num_batches` batches."""
    positions, clips = [], 0
    with Timer() as t:
        for _ in range(num_batches):
            batch = next(loader_iter)
            clips += batch["video"].shape[0]
            positions += list(zip(batch["video_id"], batch["frame_index"].tolist()))
    return t, clips, positions


def time_raw(positions, source_of, fps_of):
    with Timer() as t:
        for vid, indices in positions:
            raw_decode(source_of(vid), indices, fps_of(vid))
    return t, len(positions)


def decode_only_loader(urls: str, frames: int, stride: int):
    """Our training pipeline (shards, resampling, shuffle buffer, clip sampling, decoding,
    batching) with the augmentation replaced by a reshape: what raw decoding compares to."""
    dataset = TrainClips(urls, frames=frames, stride=stride, transform=lambda clip, rng: torch.from_numpy(clip),
                         batch_size=4, batches_per_worker=10**9, num_workers=0, rank=0, world_size=1, seed=0,
                         shuffle_buffer=8)
    return iter(DataLoader(dataset, batch_size=None))


def frame_size(args) -> tuple[int, int]:
    """--size HxW -> (height, width)."""
    height, width = (int(v) for v in args.size.lower().split("x"))
    return height, width


def write_sources(args, folder: Path) -> list:
    """The benchmark's synthetic source videos (x264's long default GOP, grain) -> [(path, label)]."""
    height, width = frame_size(args)
    return write_synthetic_videos(folder, args.videos, frames=int(args.seconds * args.fps), size=(height, width),
                                  fps=args.fps, gop=None, noise=args.noise, crf=args.source_crf)


def main_vs_raw(args) -> int:
    """The loader vs plain PyAV decoding, long-GOP sources vs re-encoded shards."""
    torch.set_num_threads(1)
    height, width = frame_size(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.time()
        sources = write_sources(args, work / "sources")
        reenc = write_shards(sources, work / "reencoded", name="train", max_count=4, short_side=min(height, width),
                             gop=16, workers=2)
        copy = write_shards(sources, work / "copy", name="train", max_count=4, reencode=False, workers=2)
        print(f"prepared {args.videos} videos in {time.time() - t0:.0f}s: sources "
              f"{copy['total_bytes'] * 8 / 1e3 / (args.videos * args.seconds):.0f} kbit/s, re-encoded "
              f"{reenc['total_bytes'] * 8 / 1e3 / (args.videos * args.seconds):.0f} kbit/s")
        path_of = {Path(p).stem: p for p, _ in sources}
        reenc_bytes = shard_bytes(work / "reencoded")
        fps_of = {vid: meta["fps"] for vid, (_, meta) in reenc_bytes.items()}.__getitem__

        def urls(manifest, folder):
            return str(work / folder / manifest["url_pattern"])

        def full_loader(manifest, folder):
            return iter(build_train_loader(urls(manifest, folder), frames=args.frames, stride=args.stride, crop=224,
                                           batch_size=4, num_workers=0, seed=0, epoch_samples=10**9,
                                           shuffle_buffer=8))

        loaders = {
            "loader, decode only, --copy": decode_only_loader(urls(copy, "copy"), args.frames, args.stride),
            "loader, decode only": decode_only_loader(urls(reenc, "reencoded"), args.frames, args.stride),
            "loader --copy": full_loader(copy, "copy"),
            "loader": full_loader(reenc, "reencoded"),
        }
        for it in loaders.values():
            next(it)  # warm up: open the first shard, fill the shuffle buffer
        names = ["raw source", "raw re-encoded", *loaders]
        cpu = {k: [] for k in names}
        wall = {k: [] for k in names}
        for rep in range(args.repeats):
            positions = {}
            for name, it in loaders.items():
                t, n, positions[name] = time_loader(it, args.batches)
                cpu[name].append(n / t.cpu)
                wall[name].append(n / t.wall)
            # the raw rows decode exactly the clips the decode-only loaders drew
            for name, pos, source_of in [
                ("raw source", positions["loader, decode only, --copy"], path_of.__getitem__),
                ("raw re-encoded", positions["loader, decode only"], lambda v: reenc_bytes[v][0]),
            ]:
                t, n = time_raw(pos, source_of, fps_of)
                cpu[name].append(n / t.cpu)
                wall[name].append(n / t.wall)
            print(f"repeat {rep + 1}/{args.repeats} (clips per CPU-second): "
                  + ", ".join(f"{k} {v[-1]:.1f}" for k, v in cpu.items()))

    med = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    ratios = {
        "loader decode-only / raw decode, re-encoded bytes (target >= 0.9)":
            med["loader, decode only"] / med["raw re-encoded"],
        "loader decode-only / raw decode, source bytes (target >= 0.9)":
            med["loader, decode only, --copy"] / med["raw source"],
        "loader on re-encoded shards / loader --copy (target >= 1.5)": med["loader"] / med["loader --copy"],
        "raw decode re-encoded / raw decode source": med["raw re-encoded"] / med["raw source"],
        "full loader / decode-only loader (cost of augmentation), re-encoded":
            med["loader"] / med["loader, decode only"],
    }
    print(f"\n{args.frames}x{args.stride} clips from {height}x{width} video, one thread, medians of "
          f"{args.repeats} repeats x {args.batches * 4} clips\n")
    print("| path | clips per CPU-second | (min, max) | clips/s wall-clock |\n|---|---|---|---|")
    for k in names:
        print(f"| {k} | {med[k]:.1f} | ({min(cpu[k]):.1f}, {max(cpu[k]):.1f}) | {med_wall[k]:.1f} |")
    print("\n| ratio (CPU rates) | value |\n|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(args=vars(args), cpu=cpu, wall=wall, median_cpu=med,
                                                  median_wall=med_wall, ratios=ratios), indent=1))
    return 0



# ----------------------------------------------------------------------------- per recipe

# Forward multiply-accumulates per clip (16x224²) of each recipe's model: a FLOP model for the
# GPU side, not a measurement.
#   MViTv2-S 16x4: 64 GMACs (MViTv2 paper, Table 3; torchvision's mvit_v2_s: 64.2). The
#     pretraining form keeps 14x14 tokens in its last two blocks, so it costs more: the
#     model is a lower bound there, and the cores per GPU an upper bound.
#   MAE ViT-B 16x4 at 90 % masking (SlowFast k400_VIT_B_16x4_MAE_PT): patch embedding of all
#     1568 patches + 12 encoder blocks (width 768) on 157 tokens + 4 decoder blocks (width 512)
#     on 1569 tokens; a transformer block costs 12·N·D² + 2·N²·D MACs.
def _block_macs(tokens: int, dim: int) -> float:
    return 12 * tokens * dim ** 2 + 2 * tokens ** 2 * dim


MAE_VIT_B_GMACS = (1568 * (2 * 16 * 16 * 3) * 768 + 12 * _block_macs(157, 768) + 4 * _block_macs(1569, 512)) / 1e9
GPU_MODELS = {  # recipe: (model, forward GMACs per clip)
    "MaskFeat MViTv2-S K400 16x4": ("MViTv2-S 16x4", 64.0),
    "MAE ViT-B K400 16x4 (modelled)": ("ViT-B 16x4, 90 % masked, decoder 4x512", MAE_VIT_B_GMACS),
    "finetune MViTv2-S K400, RandAugment": ("MViTv2-S 16x4", 64.0),
    "finetune MViTv2-S SSv2, segments": ("MViTv2-S 16x4", 64.0),
}
TRAIN_FLOPS_PER_MAC = 2 * 3  # 2 FLOPs per MAC, training step = forward + backward ≈ 3 x forward

SHARD_KINDS = {  # name: write_shards options
    "today": dict(),
    "ref4": dict(ref_stride=4),
    "cavlc": dict(cavlc=True),
    "ref4+cavlc": dict(ref_stride=4, cavlc=True),
    "today 256": dict(short_side=256),
    "ref4+cavlc 256": dict(ref_stride=4, cavlc=True, short_side=256),
}


def recipe_settings(config: str) -> tuple[dict, int]:
    """build_train_loader keyword arguments from a recipe's data section, and its batch size."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / config)
    data = OmegaConf.to_container(cfg.data)
    # today's loader: the speed levers (align_starts, the device-side normalization) are set per row
    keys = ("frames", "stride", "crop", "scale", "ratio", "flip", "rand_augment", "erase_prob", "repeats", "sampling",
            "short_side")
    kw = {k: tuple(data[k]) if isinstance(data[k], list) else data[k] for k in keys if k in data}
    return kw, int(cfg.train.batch_size)


def maskfeat_masker():
    """The MaskFeat-S recipe's cube masks (8x7x7 units, ratio 0.4), as its task makes them."""
    from pretrain.masking import CubeMaskGenerator

    return CubeMaskGenerator((8, 7, 7), 0.4, min_area=49 // 5, max_area=49, mode="cube")


def recipes() -> dict:
    """{recipe: (loader kwargs, batch size, mask generator or None)}."""
    maskfeat, batch = recipe_settings("configs/pretrain/k400_mvitv2_s_16x4_maskfeat.yaml")
    finetune, ft_batch = recipe_settings("configs/finetune/k400_mvitv2_s_16x4_maskfeat.yaml")
    ssv2, ssv2_batch = recipe_settings("configs/finetune/ssv2_mvitv2_s_16x4_maskfeat.yaml")
    mae = dict(maskfeat, repeats=4)
    return {
        "MaskFeat MViTv2-S K400 16x4": (maskfeat, batch, maskfeat_masker()),
        "MAE ViT-B K400 16x4 (modelled)": (mae, 4, None),
        "finetune MViTv2-S K400, RandAugment": (finetune, ft_batch, None),
        "finetune MViTv2-S SSv2, segments": (ssv2, ssv2_batch, None),
    }


# (row name, shard kind, decode skips unused non-reference frames, loader overrides). "+" rows add
# to the skipping row; "alone" rows change one thing of today's loader.
TODAY = ("today's loader", "today", False, {})
UINT8 = dict(normalize=False)  # uint8 clips, normalized on the training device (videodata.normalize_video)
MASKFEAT_LEVERS = [
    TODAY,
    ("skip unused non-reference frames", "today", True, {}),
    ("+ CAVLC shards", "cavlc", True, {}),
    ("+ ref_stride 4 shards", "ref4", True, {}),
    ("+ ref_stride 4 shards, aligned starts", "ref4", True, dict(align_starts=True)),
    ("+ ref_stride 4 + CAVLC shards", "ref4+cavlc", True, {}),
    ("+ ref_stride 4 + CAVLC shards, aligned starts", "ref4+cavlc", True, dict(align_starts=True)),
    ("uint8 clips normalized on the GPU alone", "today", False, UINT8),
    ("short side 256 alone", "today 256", False, {}),
    ("repeats 2 alone (the reference's: 1)", "today", False, dict(repeats=2)),
    ("320, any start: skip + ref_stride 4 + CAVLC + uint8", "ref4+cavlc", True, UINT8),
    ("320, all: skip + ref_stride 4 + CAVLC + uint8, aligned starts", "ref4+cavlc", True,
     dict(UINT8, align_starts=True)),
    ("256, any start: skip + ref_stride 4 + CAVLC + uint8", "ref4+cavlc 256", True, UINT8),
    ("256, all: skip + ref_stride 4 + CAVLC + uint8, aligned starts", "ref4+cavlc 256", True,
     dict(UINT8, align_starts=True)),
]
MAE_LEVERS = [
    TODAY,
    ("320, any start: skip + ref_stride 4 + CAVLC + uint8", "ref4+cavlc", True, UINT8),
    ("320, all: skip + ref_stride 4 + CAVLC + uint8, aligned starts", "ref4+cavlc", True,
     dict(UINT8, align_starts=True)),
    ("256, all: skip + ref_stride 4 + CAVLC + uint8, aligned starts", "ref4+cavlc 256", True,
     dict(UINT8, align_starts=True)),
]
FINETUNE_LEVERS = [  # random erasing works on normalized clips: no uint8 clips here
    TODAY,
    ("320, any start: skip + ref_stride 4 + CAVLC", "ref4+cavlc", True, {}),
    ("320, all: skip + ref_stride 4 + CAVLC, aligned starts", "ref4+cavlc", True, dict(align_starts=True)),
    ("256, all: skip + ref_stride 4 + CAVLC, aligned starts", "ref4+cavlc 256", True, dict(align_starts=True)),
]
SSV2_LEVERS = [  # segment sampling: no clip start to align
    TODAY,
    ("skip unused non-reference frames", "today", True, {}),
    ("320, all: skip + ref_stride 4 + CAVLC", "ref4+cavlc", True, {}),
    ("256, all: skip + ref_stride 4 + CAVLC", "ref4+cavlc 256", True, {}),
]
LEVERS = {"MaskFeat": MASKFEAT_LEVERS, "MAE": MAE_LEVERS, "finetune MViTv2-S K400": FINETUNE_LEVERS,
          "finetune MViTv2-S SSv2": SSV2_LEVERS}


@contextmanager
def decoding(skip_unused: bool):
    """The loader's decode_frames with skip_unused set (today's loader: False)."""
    original = videodata.pipeline.decode_frames
    videodata.pipeline.decode_frames = functools.partial(decode_frames, skip_unused=skip_unused)
    try:
        yield
    finally:
        videodata.pipeline.decode_frames = original


def main_recipes(args) -> int:
    torch.set_num_threads(1)
    height, width = frame_size(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.time()
        sources = write_sources(args, work / "sources")
        urls, kbits = {}, {}
        for kind, options in SHARD_KINDS.items():
            m = write_shards(sources, work / kind.replace(" ", "_"), name="train", max_count=4, gop=16,
                             workers=2, **dict(dict(short_side=320), **options))
            urls[kind] = str(work / kind.replace(" ", "_") / m["url_pattern"])
            kbits[kind] = m["total_bytes"] * 8 / 1e3 / (args.videos * args.seconds)
        print(f"prepared {args.videos} videos x {args.seconds:.0f} s in {time.time() - t0:.0f} s; shard bitrates "
              + ", ".join(f"{k} {v:.0f} kbit/s" for k, v in kbits.items()), flush=True)

        rows = {}  # (recipe, lever) -> (iterator, skip_unused)
        for recipe, (kw, batch, masker) in recipes().items():
            if args.only and args.only.lower() not in recipe.lower():
                continue
            for name, kind, skip, extra in next(v for k, v in LEVERS.items() if recipe.startswith(k)):
                settings = dict(kw, **extra)
                loader = build_train_loader(urls[kind], batch_size=batch, num_workers=0, seed=0,
                                            epoch_samples=10**9, shuffle_buffer=8, mask_generator=masker, **settings)
                rows[recipe, name] = (iter(loader), skip)
        for (recipe, name), (it, skip) in rows.items():
            with decoding(skip):
                next(it)  # warm up: open the first shard, fill the shuffle buffer
        cpu = {k: [] for k in rows}
        wall = {k: [] for k in rows}
        for rep in range(args.repeats):
            for key, (it, skip) in rows.items():
                with decoding(skip):
                    t, n, _ = time_loader(it, args.batches)
                cpu[key].append(n / t.cpu)
                wall[key].append(n / t.wall)
            print(f"round {rep + 1}/{args.repeats} done ({time.time() - t0:.0f} s)", flush=True)

    med = {k: statistics.median(v) for k, v in cpu.items()}
    peak = args.peak_tflops * 1e12 * args.mfu
    lines = [f"Clips per CPU-second (= per core; loader in-process, num_workers=0, one thread, "
             f"time.process_time), medians of {args.repeats} interleaved rounds x {args.batches} batches; "
             f"{args.videos} synthetic {height}x{width} videos of {args.seconds:.0f} s at {args.fps:g} fps. GPU "
             f"clips/s: a FLOP model, {args.peak_tflops:g} TFLOP/s dense bf16 x {args.mfu:.0%} MFU, training = 3 x "
             f"forward.", "",
             "× today's: ratio of the medians [median of the per-round ratios, each lever against today's "
             "loader of the same round].", "",
             "| recipe | lever | clips per CPU-second (min, max) | × today's | GPU clips/s (model) | cores per GPU |",
             "|---|---|---|---:|---:|---:|"]
    table = []
    for (recipe, name), v in med.items():
        model, gmacs = GPU_MODELS[recipe]
        gpu = peak / (gmacs * 1e9 * TRAIN_FLOPS_PER_MAC)
        base = med[recipe, TODAY[0]]
        paired = statistics.median(a / b for a, b in zip(cpu[recipe, name], cpu[recipe, TODAY[0]]))
        table.append(dict(recipe=recipe, lever=name, clips_per_cpu_s=v, min=min(cpu[recipe, name]),
                          max=max(cpu[recipe, name]), vs_today=v / base, vs_today_paired=paired, gpu_model=model,
                          gpu_gmacs=gmacs, gpu_clips_per_s=gpu, cores_per_gpu=gpu / v))
        lines.append(f"| {recipe} | {name} | {v:.1f} ({min(cpu[recipe, name]):.1f}, {max(cpu[recipe, name]):.1f}) "
                     f"| {v / base:.2f} [{paired:.2f}] | {gpu:.0f} | {gpu / v:.0f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(args=vars(args), kbit_per_s=kbits, rows=table,
                                                  cpu={" / ".join(k): v for k, v in cpu.items()},
                                                  wall={" / ".join(k): v for k, v in wall.items()}), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--vs-raw", action="store_true", help="the loader vs plain PyAV decoding instead of the recipes")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each source video")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", default="320x428", help="source HxW (default: short side 320, 4:3)")
    p.add_argument("--frames", type=int, default=16, help="--vs-raw only (the recipes set their own)")
    p.add_argument("--stride", type=int, default=4, help="--vs-raw only")
    p.add_argument("--batches", type=int, default=None,
                   help="batches per measurement (default: 6 of 4 clips with --vs-raw, 3 per recipe row)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--noise", type=float, default=10.0, help="grain std of the synthetic sources")
    p.add_argument("--source-crf", type=int, default=23,
                   help="x264 CRF of the sources (default 23, the re-encoding's: then only the GOP differs)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak for the model (H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilization assumed for the GPU rate")
    p.add_argument("--only", help="only the recipes whose name contains this (e.g. MaskFeat)")
    p.add_argument("--workdir", help="keep the videos and shards here (default: a temp folder)")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batches is None:
        args.batches = 6 if args.vs_raw else 3
    return main_vs_raw(args) if args.vs_raw else main_recipes(args)


if __name__ == "__main__":
    raise SystemExit(main())
