"""Turn video folders + annotations into webdataset tar shards (run once per split).

    python scripts/make_shards.py kinetics --csv kinetics400/train.csv --videos k400/train \\
        --split train --out shards/k400 --name train --workers 16
    python scripts/make_shards.py ssv2 --labels labels.json --split-file validation.json \\
        --videos 20bn-something-something-v2 --out shards/ssv2 --name val
    python scripts/make_shards.py folders data/my_classes --out shards/mine
    python scripts/make_shards.py unlabeled "raw/**/*.mp4" --out shards/raw --name pretrain
    python scripts/make_shards.py folders data/my_classes --out shards/mine --check

Writes OUT/NAME-000000.tar ..., OUT/NAME-manifest.json, OUT/NAME-failures.csv and
OUT/NAME-state.json (the complete shards so far; rerun the same command with --resume
after an interruption). Videos are re-encoded (H.264, constant frame rate, upright, short
side 320, keyframe every 16 frames, every 4th frame a reference frame, CAVLC, no audio)
unless --copy; docs/data_speed.md says what the last two buy. A video that cannot be read
is listed in the failures file with the reason; the run goes on. Exit codes:
0 done (even with failures), 1 --check found unreadable files, 2 bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

from pretrain.config import ScriptParser
from videodata.shards import check_videos, write_failures, write_shards
from videodata.sources import (SourceError, folder_sources, kinetics_sources, read_class_list, ssv2_sources,
                               unlabeled_sources)


def parse_size(text: str) -> int:
    """'500MB', '1GB', '2GiB', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 1GB)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    sub = p.add_subparsers(dest="kind", required=True, metavar="{kinetics,ssv2,folders,unlabeled}")
    k = sub.add_parser("kinetics", help="Kinetics CSV (label,youtube_id,time_start,time_end,split) + video folder")
    k.add_argument("--csv", required=True)
    k.add_argument("--videos", required=True, help="folder with {youtube_id}_{start:06d}_{end:06d}.mp4|webm|mkv")
    k.add_argument("--split", help="keep rows whose split column equals this (default: all rows)")
    s = sub.add_parser("ssv2", help="Something-Something-v2 labels.json + train/validation.json + {id}.webm")
    s.add_argument("--labels", required=True, help="labels.json (template -> index)")
    s.add_argument("--split-file", required=True, help="train.json / validation.json")
    s.add_argument("--videos", required=True)
    f = sub.add_parser("folders", help="class-per-folder tree ROOT/<class>/**/<video>")
    f.add_argument("root")
    u = sub.add_parser("unlabeled", help="videos without labels: a folder, a glob (quote it) or a list file")
    u.add_argument("source")
    for q in (k, s, f, u):
        g = q.add_argument_group("output")
        g.add_argument("--out", required=True, help="output folder")
        g.add_argument("--name", help="shard name prefix (default: --split, else 'train', or 'data' if unlabeled)")
        g.add_argument("--shard-count", type=int, default=1000, help="max videos per shard (default 1000; 0: no limit)")
        g.add_argument("--shard-size", type=parse_size, default="1GB", help="max bytes per shard (default 1GB; 0: no limit)")
        g.add_argument("--classes", help="fix the class list: a *-manifest.json or a text file, one name per line")
        g.add_argument("--limit", type=int, help="only the first N videos (for a try run)")
        e = q.add_argument_group("encoding")
        e.add_argument("--copy", action="store_true", help="keep the original bytes (no re-encoding)")
        e.add_argument("--short-side", type=int, default=320, help="re-encode to this short side (default 320; never upscales)")
        e.add_argument("--max-fps", type=float, help="drop frames above this rate (e.g. 30)")
        e.add_argument("--gop", type=int, default=16, help="max frames between keyframes (default 16, at most 32)")
        e.add_argument("--ref-stride", type=int,
                       help="every N-th frame a reference frame, the ones between non-reference B-frames (fixed "
                            "pattern; N must divide --gop): clips of stride N starting on that grid decode about 1/N "
                            "of their span (docs/data_speed.md). Default 4 when --gop is a multiple of 4; "
                            "0: x264's adaptive B-frames (the layout before this option)")
        e.add_argument("--entropy", choices=("cavlc", "cabac"), default="cavlc",
                       help="H.264 entropy coding: cavlc (default) decodes clips about twice as fast for ~10%% more "
                            "bytes; cabac: x264's default, the smallest files")
        e.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (default 23)")
        e.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
        e.add_argument("--no-autorotate", action="store_true",
                       help="keep frames as stored, ignoring the display rotation that players apply")
        e.add_argument("--min-frames", type=int, default=2,
                       help="record videos with fewer frames as too short (default 2: one frame is a still image)")
        r = q.add_argument_group("run")
        r.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="parallel processes (default: all cores; 0: in this process, no crash protection)")
        r.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
        r.add_argument("--timeout", type=int, default=600,
                       help="seconds per video before its worker is killed and it counts as a failure (0: none)")
        r.add_argument("--resume", action="store_true",
                       help="keep the complete shards of an interrupted run with the same inputs and options")
        r.add_argument("--check", action="store_true", help="only decode every video and report unreadable ones")
        r.add_argument("--no-progress", action="store_true")
    return p


def read_sources(args):
    classes = read_class_list(args.classes) if args.classes else None
    if args.kind == "kinetics":
        return kinetics_sources(args.csv, args.videos, split=args.split, classes=classes)
    if args.kind == "ssv2":
        return ssv2_sources(args.labels, args.split_file, args.videos)
    if args.kind == "folders":
        return folder_sources(args.root, classes=classes)
    return unlabeled_sources(args.source)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not 1 <= args.gop <= 32:
        print(f"error: --gop must be in 1..32 (short GOPs are the point), got {args.gop}", file=sys.stderr)
        return 2
    if args.ref_stride is None:
        args.ref_stride = 4 if args.gop % 4 == 0 else 0
    if args.ref_stride < 0 or (args.ref_stride and args.gop % args.ref_stride):
        print(f"error: --ref-stride must divide --gop ({args.gop}), got {args.ref_stride}", file=sys.stderr)
        return 2
    if args.min_frames < 1:
        print(f"error: --min-frames must be at least 1, got {args.min_frames}", file=sys.stderr)
        return 2
    name = args.name or getattr(args, "split", None) or ("data" if args.kind == "unlabeled" else "train")
    try:
        found = read_sources(args)
    except SourceError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    videos = found.videos[:args.limit] if args.limit else found.videos
    print(f"{len(videos)} videos, {len(found.classes)} classes, {len(found.missing)} annotations without a usable video")
    if not videos:
        print("error: no videos to shard", file=sys.stderr)
        return 2
    progress = not args.no_progress
    if args.check:
        failed = list(found.missing) + check_videos(videos, workers=args.workers, timeout=args.timeout or None,
                                                    min_frames=args.min_frames, progress=progress)
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"{name}-failures.csv")
        write_failures(path, failed)
        for p, reason in failed[:20]:
            print(f"  {p}: {reason}")
        print(f"{len(failed)} unreadable of {len(videos) + len(found.missing)}; list in {path}")
        return 1 if failed else 0
    inputs = {k: v for k, v in vars(args).items() if k in ("kind", "csv", "videos", "split", "labels",
                                                             "split_file", "root", "source", "classes")}
    manifest = write_shards(
        videos, args.out, name=name, max_count=args.shard_count or None, max_bytes=args.shard_size or None,
        reencode=not args.copy, short_side=args.short_side, max_fps=args.max_fps, gop=args.gop, crf=args.crf,
        preset=args.preset, autorotate=not args.no_autorotate, min_frames=args.min_frames,
        ref_stride=args.ref_stride or None, cavlc=args.entropy == "cavlc", workers=args.workers,
        seed=args.seed, classes=found.classes, failures=found.missing,
        command="python scripts/make_shards.py " + shlex.join(argv), inputs=inputs, timeout=args.timeout or None,
        resume=args.resume, progress=progress)
    if args.resume:
        kept = manifest["resumed"]
        print(f"resumed: kept {kept['shards']} complete shards ({kept['videos']} videos done) of an earlier run"
              if kept["shards"] else "resume: no complete shards of a run with the same inputs and options; "
              "encoded everything")
    print(f"{manifest['total']} videos in {len(manifest['shards'])} shards "
          f"({manifest['total_bytes'] / 1e9:.2f} GB), {manifest['failures']} failures "
          f"(see {os.path.join(args.out, manifest['failures_file'])})")
    if manifest["shards"]:
        print(f"shards: {os.path.join(args.out, manifest['url_pattern'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
