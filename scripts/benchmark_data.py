"""Clips/s per worker for 16x4 clips: raw PyAV decode vs our loader, long-GOP vs re-encoded.

    python scripts/benchmark_data.py                # synthetic sources, a few minutes
    python scripts/benchmark_data.py --videos 12 --repeats 7 --out bench.json

Measured side by side in one process and one thread, interleaved over several repeats
(medians reported), on the same clip positions:

    raw source            plain PyAV decode of the clips from the source files (long
                          GOP: x264's default keyframe interval, 250), seek + decode + RGB
    raw re-encoded        the same from the re-encoded shard bytes (GOP 16)
    loader, decode only   our training pipeline (tar streaming, resampling, shuffle buffer,
                          clip sampling, decoding, batching) without augmentation: the
                          like-for-like comparison with raw decoding
    loader                build_train_loader as training uses it: + random resized crop
                          to 224, flip, normalization to float
    "--copy" rows         the same on shards that keep the source bytes

Rates are clips per CPU-second of this process (every row runs in one thread) and, for
reference, per wall-clock second; on a machine shared with other jobs the CPU rate is the
stable one. Sources are synthetic (textured moving shapes with grain) at the re-encoding
resolution (short side 320), so GOP length is the only difference between the shard
kinds; real footage decodes at a different speed per frame, which moves the absolute
numbers more than the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader

from pretrain.config import ScriptParser
from videodata import build_train_loader, write_shards, write_synthetic_videos
from videodata.pipeline import TrainClips


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


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each source video")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", default="320x428", help="source HxW (default: short side 320, 4:3)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--batches", type=int, default=6, help="batches of 4 clips per measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--noise", type=float, default=10.0, help="grain std of the synthetic sources")
    p.add_argument("--source-crf", type=int, default=23,
                   help="x264 CRF of the sources (default 23, the re-encoding's: then only the GOP differs)")
    p.add_argument("--workdir", help="keep the videos and shards here (default: a temp folder)")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    height, width = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.time()
        sources = write_synthetic_videos(work / "sources", args.videos, frames=int(args.seconds * args.fps),
                                         size=(height, width), fps=args.fps, gop=None, noise=args.noise,
                                         crf=args.source_crf)
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


if __name__ == "__main__":
    raise SystemExit(main())
