"""An interrupted scripts/make_shards.py run, continued with --resume, gives the shards of an
uninterrupted run: the same samples in the same shards, none twice, none lost."""

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from videodata import read_manifest, write_synthetic_videos

ROOT = Path(__file__).resolve().parents[1]
NUM_VIDEOS, PER_SHARD = 24, 3


def make_shards_args(videos: Path, out: Path, *extra) -> list[str]:
    return ["folders", str(videos), "--out", str(out), "--shard-count", str(PER_SHARD), "--short-side", "48",
            "--workers", "0", "--no-progress", *extra]


def shard_ids(out: Path) -> list[list[str]]:
    """[[sample id, ...] per shard] in shard and tar order."""
    ids = []
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            ids.append([json.load(tar.extractfile(n))["id"] for n in tar.getnames() if n.endswith(".json")])
    return ids


def failures(out: Path) -> list[list[str]]:
    with open(out / "train-failures.csv", newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_synthetic_videos(root / "videos", NUM_VIDEOS, frames=24, size=(64, 96), seed=3)
    (root / "videos" / "circle_left" / "broken.mp4").write_bytes(b"not a video\n" * 10)
    return root / "videos"


@pytest.mark.timeout(120)
def test_resume_after_kill_gives_the_uninterrupted_shards(make_shards, videos, tmp_path):
    reference = tmp_path / "reference"
    assert make_shards.main(make_shards_args(videos, reference)) == 0

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "make_shards.py"), *make_shards_args(videos, out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill it while it writes its fourth shard
    writing = out / "train-000003.tar.tmp"
    deadline = time.time() + 90
    while not writing.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and writing.exists()
    assert not (out / "train-manifest.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.tar")}
    assert len(before) >= 3

    assert make_shards.main(make_shards_args(videos, out, "--resume")) == 0
    m = read_manifest(out)
    assert m["resumed"]["shards"] == 3  # the shards recorded complete before the kill were kept ...
    kept = sorted(before)[:3]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == {name: before[name] for name in kept}
    # ... and the result is the uninterrupted run's: same samples, same shards, no duplicates
    ids = shard_ids(out)
    assert ids == shard_ids(reference)
    flat = [i for shard in ids for i in shard]
    assert len(flat) == len(set(flat)) == NUM_VIDEOS
    assert failures(out) == failures(reference) and len(failures(out)) == 2  # header + broken.mp4
    ref = read_manifest(reference)
    assert (m["total"], m["per_class"], m["failures"]) == (ref["total"], ref["per_class"], ref["failures"])
    assert not list(out.glob("*.tmp"))

    # other options: nothing to keep, everything encoded again
    assert make_shards.main(make_shards_args(videos, out, "--resume", "--seed", "1")) == 0
    assert read_manifest(out)["resumed"]["shards"] == 0
    assert sorted(i for shard in shard_ids(out) for i in shard) == sorted(flat)
