"""Finding videos and their labels: Kinetics CSV, Something-Something-v2 JSON, class
folders, or unlabeled folders / globs / list files.

Each reader returns a `SourceList`: the videos to shard (path, label index, label name,
source id), the class names, and the annotations whose video could not be found (those
go to the failures file; a missing video is never fatal).
"""

from __future__ import annotations

import bisect
import csv
import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


class SourceError(Exception):
    """An input that cannot be read at all (missing annotation file, bad format)."""


@dataclass
class VideoSource:
    path: str
    label: int = -1  # -1: unlabeled
    label_name: str | None = None
    source_id: str | None = None  # e.g. the YouTube id or SSv2 id; default: file stem

    def __post_init__(self):
        if self.source_id is None:
            self.source_id = Path(self.path).stem


@dataclass
class SourceList:
    videos: list[VideoSource]
    classes: list[str]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (expected path or id, reason)


def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _video_files(root: str) -> list[str]:
    """All video files under `root`, recursively, sorted (so runs are reproducible)."""
    if not os.path.isdir(root):
        raise SourceError(f"video folder not found: {root}")
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_video(f))
    return out


class _StemIndex:
    """Looks up video files by exact stem or by stem prefix."""

    def __init__(self, files: list[str]):
        self.by_stem: dict[str, list[str]] = {}
        for f in files:
            self.by_stem.setdefault(Path(f).stem, []).append(f)
        self.stems = sorted(self.by_stem)

    def exact(self, stem: str) -> list[str]:
        return self.by_stem.get(stem, [])

    def prefixed(self, prefix: str) -> list[str]:
        i = bisect.bisect_left(self.stems, prefix)
        out = []
        while i < len(self.stems) and self.stems[i].startswith(prefix):
            out.extend(self.by_stem[self.stems[i]])
            i += 1
        return out


def read_class_list(path: str) -> list[str]:
    """Class names from a shard manifest (JSON with "classes") or a text file, one per line."""
    if not os.path.isfile(path):
        raise SourceError(f"class list not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            return list(json.loads(text)["classes"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{path}: expected a JSON object with a 'classes' list") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names(paths: list[str], limit: int = 5) -> str:
    """File names for a one-line reason."""
    names = [os.path.basename(p) for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _claim(found: list[str], used: dict[str, str], annotation: str) -> tuple[str | None, str | None]:
    """(file, None) when exactly one file matches and no other annotation took it, else
    (None, reason). Two annotations never share one file."""
    if not found:
        return None, "missing video file"
    if len(found) > 1:
        return None, f"ambiguous: {len(found)} files match ({_names(found)})"
    if found[0] in used:
        return None, f"ambiguous: {_names(found)} is already the video of {used[found[0]]}"
    used[found[0]] = annotation
    return found[0], None


def kinetics_sources(csv_path: str, video_root: str, split: str | None = None,
                     classes: list[str] | None = None) -> SourceList:
    """Kinetics annotations: CSV with columns label, youtube_id, time_start, time_end, split.

    A row's video is the file `{youtube_id}_{start:06d}_{end:06d}.{ext}` under `video_root`
    (any depth). A file named by the youtube id alone is taken only when that id has a
    single row in the CSV: with several segments of one id, the file could be any of them.
    No file serves two rows; a row without its own file is recorded as missing (naming the
    files of other segments of its id) or ambiguous. Class indices are the sorted label
    names of the whole CSV (all splits, so train and val agree) unless `classes` is given.
    """
    if not os.path.isfile(csv_path):
        raise SourceError(f"annotation CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    needed = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not needed <= set(rows[0]):
        raise SourceError(f"{csv_path}: expected columns {sorted(needed)} (+ split)")
    if classes is None:
        classes = sorted({r["label"].strip() for r in rows})
    class_index = {c: i for i, c in enumerate(classes)}
    rows_per_id = Counter(r["youtube_id"].strip() for r in rows)
    index = _StemIndex(_video_files(video_root))
    out = SourceList([], list(classes))
    used: dict[str, str] = {}
    for r in rows:
        if split is not None and r.get("split", "").strip() != split:
            continue
        yid, label = r["youtube_id"].strip(), r["label"].strip()
        try:
            stem = f"{yid}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        except ValueError:
            out.missing.append((yid, f"bad time_start/time_end: {r['time_start']!r}, {r['time_end']!r}"))
            continue
        if label not in class_index:
            out.missing.append((stem, f"label {label!r} not in the class list"))
            continue
        found = index.exact(stem)
        if not found and index.exact(yid):
            if rows_per_id[yid] > 1:
                out.missing.append((stem, f"ambiguous: {_names(index.exact(yid))} is named by the id alone and "
                                          f"{yid} has {rows_per_id[yid]} rows in the CSV"))
                continue
            found = index.exact(yid)
        path, reason = _claim(found, used, stem)
        if path is None:
            others = index.prefixed(yid + "_")
            if not found and others:
                reason += f" (other segments of {yid}: {_names(others)})"
            out.missing.append((stem, reason))
            continue
        out.videos.append(VideoSource(path, class_index[label], label))  # id: the file stem
    return out


def _strip_brackets(template: str) -> str:
    # SSv2's train.json writes "Putting [something] on [something]"; labels.json keys
    # drop the brackets.
    return template.replace("[", "").replace("]", "")


def ssv2_sources(labels_json: str, split_json: str, video_root: str) -> SourceList:
    """Something-Something-v2: labels.json (template -> index), a split file (list of
    {"id", "template", ...}) and videos `{id}.webm` under `video_root` (the id must be the
    whole file stem; an id listed twice gets its file once). Entries without a template
    (the test split) are unlabeled.
    """
    for p in (labels_json, split_json):
        if not os.path.isfile(p):
            raise SourceError(f"annotation file not found: {p}")
    try:
        with open(labels_json, encoding="utf-8") as f:
            label_map = {k: int(v) for k, v in json.load(f).items()}
        with open(split_json, encoding="utf-8") as f:
            entries = json.load(f)
    except (ValueError, AttributeError) as exn:
        raise SourceError(f"cannot read SSv2 annotations: {exn}") from None
    classes = [""] * len(label_map)
    for name, i in label_map.items():
        if not 0 <= i < len(classes):
            raise SourceError(f"{labels_json}: label index {i} out of range")
        classes[i] = name
    index = _StemIndex(_video_files(video_root))
    out = SourceList([], classes)
    used: dict[str, str] = {}
    for e in entries:
        vid = str(e["id"])
        path, reason = _claim(index.exact(vid), used, f"id {vid}")
        if path is None:
            out.missing.append((f"{vid}.webm", reason))
            continue
        if "template" in e:
            name = _strip_brackets(e["template"])
            if name not in label_map:
                out.missing.append((path, f"template {name!r} not in {os.path.basename(labels_json)}"))
                continue
            out.videos.append(VideoSource(path, label_map[name], name, vid))
        else:
            out.videos.append(VideoSource(path, -1, None, vid))
    return out


def folder_sources(root: str, classes: list[str] | None = None) -> SourceList:
    """Class-per-folder tree: root/<class>/**/<video>; classes are the sorted folder names."""
    if not os.path.isdir(root):
        raise SourceError(f"video folder not found: {root}")
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise SourceError(f"{root}: no class folders")
    out = SourceList([], list(classes))
    for i, name in enumerate(classes):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            out.videos.extend(VideoSource(p, i, name) for p in _video_files(folder))
    return out


def unlabeled_sources(spec: str) -> SourceList:
    """Videos without labels, for pretraining: a folder (recursive), a glob pattern, or a
    text file listing one path per line (relative paths are relative to the list file).
    """
    if os.path.isdir(spec):
        paths = _video_files(spec)
    elif os.path.isfile(spec) and not _is_video(spec):
        base = os.path.dirname(spec)
        with open(spec, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        paths = [ln if os.path.isabs(ln) else os.path.join(base, ln) for ln in lines]
    elif any(c in spec for c in "*?["):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        raise SourceError(f"not a folder, list file or glob with matches: {spec}")
    if not paths:
        raise SourceError(f"no videos found in {spec}")
    return SourceList([VideoSource(p) for p in paths], [])
