"""Shard preparation speed: videos/s of one make_shards worker on synthetic and real-codec inputs.

    python scripts/benchmark_shards.py                 # 6 videos per kind, about 2 minutes
    python scripts/benchmark_shards.py --videos 16 --seconds 10 --out bench.json

Kinds of source (10 s at 30 fps each, moving textured shapes with grain):

    synthetic   our generator's H.264 mp4, 320x240, no audio (videodata.write_synthetic_videos)
    h264+aac    H.264 High with B-frames (x264 preset medium) + AAC stereo, 640x360 .mp4
    vp9+opus    VP9 + Opus, 640x360 .webm (as SSv2 and YouTube downloads)

Each kind goes through write_shards with one worker process and the default re-encoding
(short side 320, GOP 16, CRF 23, veryfast). Rates are videos per wall-clock second and per
CPU-second of the worker (the stable number on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pretrain.config import ScriptParser
from videodata import write_shards, write_synthetic_videos
from videodata.synthetic import LABELS, synthetic_frames

FPS = 30


def write_av(path: Path, frames, *, video: str, audio: str, fmt: str, options: dict):
    """Video + a stereo tone through PyAV, as a camera or downloader would write them."""
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(video, rate=FPS, options=options)
        v.width, v.height, v.pix_fmt = 640, 360, "yuv420p"
        a = out.add_stream(audio, rate=48000, layout="stereo")
        samples = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(v.encode(frame))
            n = 48000 * (i + 1) // FPS - samples
            tone = np.sin(2 * np.pi * 440 * (samples + np.arange(n)) / 48000).astype(np.float32) * 0.1
            chunk = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, samples, Fraction(1, 48000)
            out.mux(a.encode(chunk))
            samples += n
        out.mux(v.encode(None))
        out.mux(a.encode(None))


def make_sources(root: Path, kind: str, n: int, seconds: float) -> list[str]:
    frames = int(seconds * FPS)
    root.mkdir(parents=True, exist_ok=True)
    if kind == "synthetic":
        return [p for p, _ in write_synthetic_videos(root, n, frames=frames, size=(240, 320), fps=FPS, noise=8,
                                                     gop=None)]
    paths = []
    for i in range(n):
        pictures = synthetic_frames(LABELS[i % len(LABELS)], frames=frames, size=(360, 640), seed=i, noise=8)
        if kind == "h264+aac":
            path = root / f"{i:03d}.mp4"
            write_av(path, pictures, video="libx264", audio="aac", fmt="mp4", options={"preset": "medium"})
        else:
            path = root / f"{i:03d}.webm"
            write_av(path, pictures, video="libvpx-vp9", audio="libopus", fmt="webm",
                     options={"deadline": "realtime", "cpu-used": "8", "b": "1M"})
        paths.append(str(path))
    return paths


def measure(paths: list[str], out: Path) -> dict:
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    manifest = write_shards([(p, None) for p in paths], out, workers=1)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert manifest["total"] == len(paths), manifest["failures"]
    return dict(videos=len(paths), wall_s=round(wall, 2), cpu_s=round(cpu, 2),
                videos_per_s=round(len(paths) / wall, 3), videos_per_cpu_s=round(len(paths) / cpu, 3))


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--videos", type=int, default=6, help="videos per kind")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--out", help="write the results as JSON here")
    return p


def main():
    args = build_parser().parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("synthetic", "h264+aac", "vp9+opus"):
            root = Path(tmp) / kind.replace("+", "_")
            sources = make_sources(root / "videos", kind, args.videos, args.seconds)
            results[kind] = measure(sources, root / "shards")
            print(f"{kind:10s} {results[kind]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
