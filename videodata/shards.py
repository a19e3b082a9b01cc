"""Writing and describing webdataset tar shards of videos.

A shard `name-000123.tar` holds samples `<key>.mp4` (or the source's own extension with
copy mode) + `<key>.json`:

    {"label": 3, "label_name": "abseiling", "id": "0wR5jVB-WPk_000417_000427",
     "fps": 30.0, "frames": 300, "duration": 10.0, "width": 427, "height": 320,
     "gop": 16, "rotation": 0, "reencoded": true, "source": "0wR5jVB-WPk_000417_000427.mp4"}

(+ "ref_stride": 4 when the shards were written with that reference-frame layout,
videodata.encode.Mp4Writer; the loader can then start clips on the reference grid.)

Next to the shards: `name-manifest.json` (classes, counts per shard, totals, command and
options), `name-failures.csv` (path, reason) for every video that could not be used, and
`name-state.json` (the run's fingerprint and complete shards, to resume an interrupted run).
Samples are shuffled across shards by a seeded permutation, so a run is reproducible and
any single shard is a fair sample of the dataset. Each shard is written to a temporary
name and renamed when complete; the manifest is written last.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import itertools
import multiprocessing
import os
import random
import re
import signal
import tarfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from videodata.decode import DecodeError, one_line, scan_video
from videodata.encode import reencode
from videodata.sources import VideoSource

MANIFEST_SUFFIX = "-manifest.json"
FAILURES_SUFFIX = "-failures.csv"
STATE_SUFFIX = "-state.json"
FORMAT = "videodata-shards/1"


@dataclass
class EncodeOptions:
    reencode: bool = True  # False: keep the original bytes (--copy)
    short_side: int | None = 320
    max_fps: float | None = None
    gop: int = 16
    crf: int = 23
    preset: str = "veryfast"
    autorotate: bool = True  # show frames upright, as players do (display rotation)
    min_frames: int = 2  # fewer decoded frames: "too short" (one frame is a still image)
    ref_stride: int | None = None  # every ref_stride-th frame a reference (encode.Mp4Writer); None: x264's
    cavlc: bool = False  # CAVLC instead of CABAC entropy coding: cheaper decoding (encode.Mp4Writer)


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as exn:
        raise DecodeError(f"cannot read: {exn.strerror or exn}") from None
    if not data:
        raise DecodeError("empty file")
    return data


def prepare_video(source: VideoSource, options: EncodeOptions) -> tuple[bytes, str, dict]:
    """One video -> (bytes, extension, metadata). Raises DecodeError if it is unusable.

    Copy mode still decodes the whole video once: that rejects files that open but do not
    decode, and counts the frames exactly.
    """
    data = _read_bytes(source.path)
    if options.reencode:
        video, info = reencode(data, short_side=options.short_side, max_fps=options.max_fps, gop=options.gop,
                               crf=options.crf, preset=options.preset, autorotate=options.autorotate,
                               ref_stride=options.ref_stride, cavlc=options.cavlc)
        ext, rotation = "mp4", 0  # the pixels are stored upright
    else:
        scanned = scan_video(data, autorotate=options.autorotate)
        video, ext = data, Path(source.path).suffix.lstrip(".").lower() or "mp4"
        info = dict(fps=scanned.fps, frames=scanned.num_frames, width=scanned.width, height=scanned.height,
                    gop=None)
        rotation = scanned.rotation  # applied when decoding (videodata.decode.decode_frames)
    _check_length(info["frames"], options.min_frames)
    meta = dict(label=source.label, label_name=source.label_name, id=source.source_id, fps=info["fps"],
                frames=info["frames"], duration=round(info["frames"] / info["fps"], 4), width=info["width"],
                height=info["height"], gop=info["gop"], rotation=rotation, reencoded=options.reencode,
                source=os.path.basename(source.path))
    if info.get("ref_stride"):
        meta["ref_stride"] = info["ref_stride"]
    return video, ext, meta


def _check_length(frames: int, min_frames: int):
    if frames < min_frames:
        raise DecodeError(f"too short: {frames} frame{'s' * (frames != 1)} (fewer than {min_frames})")


def _prepare_task(args):
    """Pool task: never raises, so one bad video cannot stop the run."""
    source, options = args
    try:
        return source, prepare_video(source, options), None
    except DecodeError as exn:
        return source, None, str(exn)
    except Exception as exn:  # a crash inside FFmpeg bindings or the encoder
        return source, None, f"{type(exn).__name__}: {one_line(exn)}"


def _prepare_crashed(task, reason: str):
    return task[0], None, reason


def _check_task(args):
    source, min_frames = args
    try:
        _read_bytes(source.path)
        _check_length(scan_video(source.path).num_frames, min_frames)
        return source, None
    except DecodeError as exn:
        return source, str(exn)
    except Exception as exn:
        return source, f"{type(exn).__name__}: {one_line(exn)}"


def _check_crashed(task, reason: str):
    return task[0], reason


def _guarded(fn, item, timeout: int | None):
    """Runs in a worker process: past `timeout` seconds the kernel kills the process
    (SIGALRM's default action), which also ends a decoder stuck inside FFmpeg."""
    if timeout:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(timeout)
    try:
        return fn(item)
    finally:
        if timeout:
            signal.alarm(0)


def parallel_map(fn, items, workers: int, *, on_crash, timeout: int | None = None):
    """Ordered map of `fn` over `items` in `workers` processes (workers=0: in this process,
    unprotected). An item whose worker dies (a crash in native code, or over `timeout`
    seconds) yields on_crash(item, reason) instead, and the run goes on.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    # fork: workers start at once and only the tasks are pickled.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    items, window, pending = iter(items), 2 * workers, deque()
    pool = ProcessPoolExecutor(workers, mp_context=context)

    def submit(n):
        for item in itertools.islice(items, n):
            pending.append((item, pool.submit(_guarded, fn, item, timeout)))

    try:
        submit(window)
        while pending:
            _, future = pending[0]
            try:
                result = future.result()
            except BrokenProcessPool:
                # One of the tasks in flight killed its worker, which broke them all: run each
                # alone to find it, then carry on with a fresh pool.
                pool.shutdown(wait=True)
                in_flight = [it for it, _ in pending]
                pending.clear()
                reason = "worker process died (crash in native code" + (
                    f", or over the {timeout}s time limit)" if timeout else ")")
                for it in in_flight:
                    with ProcessPoolExecutor(1, mp_context=context) as alone:
                        try:
                            yield alone.submit(_guarded, fn, it, timeout).result()
                        except BrokenProcessPool:
                            yield on_crash(it, reason)
                pool = ProcessPoolExecutor(workers, mp_context=context)
                submit(window)
                continue
            pending.popleft()
            yield result
            submit(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=desc, disable=not enabled, dynamic_ncols=True)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # fixed: no run-dependent headers
    return info


class _ShardSink:
    """Writes samples into numbered shards; each shard appears only once complete.

    `shards` lists the complete ones: file, count, bytes, plus what resuming needs (see
    write_shards): `end`, the number of input positions consumed when the shard closed, and
    the failures and per-class counts of the positions since the previous shard.
    """

    def __init__(self, out_dir: Path, name: str, max_count: int | None, max_bytes: int | None,
                 shards: list[dict] = ()):
        self.out_dir, self.name = out_dir, name
        self.max_count, self.max_bytes = max_count, max_bytes
        self.shards: list[dict] = list(shards)
        self.tar = None
        self.count = self.bytes = 0

    @property
    def total(self) -> int:
        """Samples written so far, complete shards and the open one."""
        return sum(s["count"] for s in self.shards) + self.count

    def full(self, size: int) -> bool:
        """Whether a sample of `size` bytes must start a new shard."""
        return self.tar is not None and bool((self.max_count and self.count >= self.max_count)
                                             or (self.max_bytes and self.bytes + size > self.max_bytes))

    def _open(self):
        self.tmp = self.out_dir / (shard_name(self.name, len(self.shards)) + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = self.bytes = 0

    def close_shard(self, **extra) -> bool:
        """Completes the open shard (if any); `extra` is stored with its entry."""
        if self.tar is None:
            return False
        self.tar.close()
        final = self.out_dir / shard_name(self.name, len(self.shards))
        os.replace(self.tmp, final)
        self.shards.append(dict(file=final.name, count=self.count, bytes=os.path.getsize(final), **extra))
        self.tar = None
        return True

    def write(self, key: str, video: bytes, ext: str, meta: dict):
        if self.tar is None:
            self._open()
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        self.tar.addfile(_tarinfo(f"{key}.{ext}", len(video)), io.BytesIO(video))
        self.tar.addfile(_tarinfo(f"{key}.json", len(meta_bytes)), io.BytesIO(meta_bytes))
        self.count += 1
        self.bytes += len(video) + len(meta_bytes)

    def abort(self):
        if self.tar is not None:
            self.tar.close()
            os.unlink(self.tmp)
            self.tar = None


def write_failures(path, failures: list[tuple[str, str]]):
    """CSV with a header row `path,reason`, written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(failures)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _remove_stale(out_dir: Path, name: str, keep: int):
    """Delete shards of an earlier, larger run and leftover temporaries of this name."""
    pattern = re.compile(re.escape(name) + r"-(\d{6})\.tar(\.tmp)?$")
    for p in out_dir.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(2) or int(m.group(1)) >= keep):
            p.unlink()


def url_pattern(name: str, num_shards: int) -> str:
    """Brace pattern covering the shards, e.g. train-{000000..000041}.tar."""
    if num_shards == 1:
        return shard_name(name, 0)
    return f"{name}-{{{0:06d}..{num_shards - 1:06d}}}.tar"


def write_shards(samples, out_dir, *, name: str = "train", max_count: int | None = 1000,
                 max_bytes: int | None = 1_000_000_000, reencode: bool = True, short_side: int | None = 320,
                 max_fps: float | None = None, gop: int = 16, crf: int = 23, preset: str = "veryfast",
                 autorotate: bool = True, min_frames: int = 2, ref_stride: int | None = None, cavlc: bool = False,
                 workers: int = 1,
                 seed: int = 0,
                 classes: list[str] | None = None, failures: list[tuple[str, str]] = (), command: str | None = None,
                 inputs: dict | None = None, timeout: int | None = 600, resume: bool = False,
                 progress: bool = False) -> dict:
    """Write videos into webdataset shards; returns the manifest (also written to disk).

    samples: VideoSource objects, or (path, label_name) pairs (labels are then indexed in
    `classes`, default: their sorted names). failures: (path, reason) pairs found before
    encoding (e.g. missing files) to record with the rest. A video that cannot be decoded
    is recorded in the failures file and skipped; the run always completes. workers:
    processes that decode and encode (0: this process); a video whose worker crashes or
    takes over `timeout` seconds is recorded as a failure too.

    resume: keep the complete shards of an earlier run into `out_dir` with the same
    fingerprint (name, options and inputs: paths, labels, sizes and modification times)
    and encode only the videos after them; the result is the same set of samples in the
    same shards as one uninterrupted run. The run's progress is kept in NAME-state.json,
    updated after every shard; without resume, an earlier run's state and shards are
    replaced.
    """
    samples = list(samples)
    if samples and not isinstance(samples[0], VideoSource):
        if classes is None:
            classes = sorted({label for _, label in samples if label is not None})
        index = {c: i for i, c in enumerate(classes)}
        samples = [VideoSource(p, index[lb] if lb is not None else -1, lb) for p, lb in samples]
    classes = list(classes or [])
    if max_count is None and max_bytes is None:
        raise ValueError("give max_count and/or max_bytes")
    if reencode and not 1 <= gop <= 32:
        raise ValueError(f"gop must be in 1..32 (short GOPs make clips cheap to decode), got {gop}")
    if reencode and ref_stride is not None and (ref_stride < 1 or gop % ref_stride):
        raise ValueError(f"ref_stride {ref_stride} must divide gop {gop} (keyframes stay on the reference grid)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An interrupted re-run must not leave the previous manifest describing new shards.
    (out_dir / (name + MANIFEST_SUFFIX)).unlink(missing_ok=True)
    options = EncodeOptions(reencode=reencode, short_side=short_side, max_fps=max_fps, gop=gop, crf=crf,
                            preset=preset, autorotate=autorotate, min_frames=min_frames,
                            ref_stride=ref_stride if reencode else None, cavlc=cavlc and reencode)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    state_path = out_dir / (name + STATE_SUFFIX)
    fingerprint = _fingerprint(name, options, dict(max_count=max_count, max_bytes=max_bytes, seed=seed),
                               [samples[i] for i in order])
    kept = _resumable_shards(out_dir, state_path, fingerprint) if resume else []
    if not kept:
        state_path.unlink(missing_ok=True)
    sink = _ShardSink(out_dir, name, max_count, max_bytes, kept)
    done = kept[-1]["end"] if kept else 0
    new_failed, new_per_class = [], [0] * len(classes)  # since the last complete shard

    def close_shard(end: int):
        nonlocal new_failed, new_per_class
        if sink.close_shard(end=end, failures=new_failed, per_class=new_per_class):
            new_failed, new_per_class = [], [0] * len(classes)
            _write_json(state_path, dict(format=FORMAT, fingerprint=fingerprint, shards=sink.shards))

    start = time.time()
    bar = _progress(len(samples), progress, name)
    bar.update(done)
    failure_count = len(failures) + sum(len(s["failures"]) for s in kept)
    try:
        tasks = ((samples[i], options) for i in order[done:])
        results = parallel_map(_prepare_task, tasks, workers, on_crash=_prepare_crashed, timeout=timeout)
        for position, (source, result, error) in enumerate(results, start=done):
            if error is None:
                if sink.full(len(result[0])):
                    close_shard(position)
                sink.write(f"{sink.total:08d}", *result)
                if 0 <= source.label < len(classes):
                    new_per_class[source.label] += 1
            else:
                new_failed.append((source.path, error))
                failure_count += 1
            bar.update(1)
            bar.set_postfix(failures=failure_count, refresh=False)
        close_shard(len(order))
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    _remove_stale(out_dir, name, len(sink.shards))
    failed = list(failures) + [f for s in sink.shards for f in s["failures"]] + new_failed
    write_failures(out_dir / (name + FAILURES_SUFFIX), failed)
    per_class = [sum(counts) for counts in zip(*(s["per_class"] for s in sink.shards))] or [0] * len(classes)
    shards = [dict(file=s["file"], count=s["count"], bytes=s["bytes"]) for s in sink.shards]
    manifest = dict(
        format=FORMAT, name=name, classes=classes, num_classes=len(classes),
        total=sum(s["count"] for s in shards), total_bytes=sum(s["bytes"] for s in shards), per_class=per_class,
        shards=shards, url_pattern=url_pattern(name, len(shards)) if shards else None,
        failures=len(failed), failures_file=name + FAILURES_SUFFIX,
        options=dict(asdict(options), max_count=max_count, max_bytes=max_bytes, seed=seed, workers=workers),
        inputs=inputs or {}, command=command, seconds=round(time.time() - start, 1),
        resumed=dict(shards=len(kept), videos=done),
    )
    _write_json(out_dir / (name + MANIFEST_SUFFIX), manifest)
    return manifest


def _fingerprint(name: str, options: EncodeOptions, layout: dict, samples: list[VideoSource]) -> str:
    """What decides a run's shards: its name, options and the inputs in shard order."""

    def stat(path):
        try:
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return None

    inputs = [[s.path, s.label, s.label_name, s.source_id, stat(s.path)] for s in samples]
    opts = asdict(options)
    for key in ("ref_stride", "cavlc"):  # runs from before these options existed stay resumable
        if not opts[key]:
            del opts[key]
    text = json.dumps([FORMAT, name, opts, layout, inputs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _resumable_shards(out_dir: Path, state_path: Path, fingerprint: str) -> list[dict]:
    """The complete shards of an earlier run with this fingerprint that are still intact."""
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return []
    kept = []
    for shard in state.get("shards", []):
        path = out_dir / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            break
        kept.append(shard)
    return kept


def check_videos(samples, *, workers: int = 1, timeout: int | None = 600, min_frames: int = 2,
                 progress: bool = False) -> list[tuple[str, str]]:
    """Decode every video once; returns (path, reason) for each one that cannot be used."""
    samples = list(samples)
    failed = []
    bar = _progress(len(samples), progress, "check")
    try:
        for source, error in parallel_map(_check_task, ((s, min_frames) for s in samples), workers,
                                          on_crash=_check_crashed, timeout=timeout):
            if error is not None:
                failed.append((source.path, error))
            bar.update(1)
            bar.set_postfix(failures=len(failed), refresh=False)
    finally:
        bar.close()
    return failed


def read_manifest(path_or_dir) -> dict:
    """The manifest of a shard set: a `*-manifest.json` path, or a folder holding one.

    Keys include `classes` (list of names), `num_classes`, `total` (samples), `shards`
    (file, count, bytes) and `url_pattern` (relative to the manifest's folder).
    """
    p = Path(path_or_dir)
    if p.is_dir():
        found = sorted(p.glob("*" + MANIFEST_SUFFIX))
        if len(found) != 1:
            what = "no" if not found else "several (" + ", ".join(f.name for f in found) + ")"
            raise FileNotFoundError(f"{p}: {what} *{MANIFEST_SUFFIX} files; pass the manifest path")
        p = found[0]
    with open(p, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["dir"] = str(p.parent)
    return manifest


def manifest_for_urls(urls: list[str]) -> dict | None:
    """The manifest next to local shards named like ours (`<name>-NNNNNN.tar`), if any."""
    m = re.match(r"^(?:file:)?(.*?)-\d{6}\.tar$", urls[0]) if urls else None
    if not m:
        return None
    path = Path(m.group(1) + MANIFEST_SUFFIX)
    return read_manifest(path) if path.is_file() else None
