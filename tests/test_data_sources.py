"""scripts/make_shards.py on each input kind: Kinetics CSV, SSv2 JSON, class folders,
unlabeled folder / glob / list file; and its one-line errors."""

import csv
import importlib.util
import json
import shutil
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from videodata import build_eval_loader, read_manifest
from videodata.encode import encode_frames

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "scripts" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_shards = load_script()


def frames(n=12, value=0):
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)


def write_mp4(path: Path, n=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_frames(frames(n, seed), fps=12))


def write_webm(path: Path, n=12, seed=0):
    """A real VP9 webm, like SSv2's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx-vp9", rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i, f in enumerate(frames(n, seed)):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def shard_metas(out_dir: Path, name: str):
    """{id: (json meta, video extension)} over all shards of `name`."""
    metas = {}
    for shard in sorted(out_dir.glob(f"{name}-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for n in names:
                if n.endswith(".json"):
                    meta = json.load(tar.extractfile(n))
                    key = n[:-5]
                    ext = next(m.split(".", 1)[1] for m in names if m.startswith(key + ".") and m != n)
                    metas[meta["id"]] = (meta, ext)
    return metas


def read_failures(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"]
    return rows[1:]


def test_kinetics_csv(tmp_path):
    videos = tmp_path / "k400"
    write_mp4(videos / "abseiling" / "aaaaaaaaaaa_000010_000020.mp4")
    write_mp4(videos / "bbbbbbbbbbb.mkv", seed=1)  # only the id prefix matches
    write_mp4(videos / "zzzzzzzzzzz_000000_000010.mp4")  # not in the CSV
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerow(["abseiling", "aaaaaaaaaaa", "10", "20", "train"])
        w.writerow(["bowling", "bbbbbbbbbbb", "0", "10", "train"])
        w.writerow(["cooking, egg", "ccccccccccc", "5", "15", "train"])  # no video file
        w.writerow(["abseiling", "ddddddddddd", "1", "11", "val"])  # other split
    out = tmp_path / "shards"
    rc = make_shards.main(["kinetics", "--csv", str(tmp_path / "train.csv"), "--videos", str(videos),
                           "--split", "train", "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0
    m = read_manifest(out / "train-manifest.json")
    assert m["classes"] == ["abseiling", "bowling", "cooking, egg"]  # sorted over all rows
    assert m["total"] == 2 and m["per_class"] == [1, 1, 0]
    assert "--split train" in m["command"] and m["inputs"]["kind"] == "kinetics"
    metas = shard_metas(out, "train")
    assert set(metas) == {"aaaaaaaaaaa_000010_000020", "bbbbbbbbbbb"}
    assert metas["aaaaaaaaaaa_000010_000020"][0]["label"] == 0
    assert metas["bbbbbbbbbbb"][0]["label"] == 1 and metas["bbbbbbbbbbb"][0]["label_name"] == "bowling"
    assert {ext for _, ext in metas.values()} == {"mp4"}  # re-encoded
    meta = metas["bbbbbbbbbbb"][0]
    assert meta["frames"] == 12 and meta["fps"] == 12 and meta["width"] == 48 and meta["height"] == 32
    assert read_failures(out / "train-failures.csv") == [["ccccccccccc_000005_000015", "missing video file"]]


def test_ssv2_json_copy_mode_keeps_webm(tmp_path):
    videos = tmp_path / "ssv2"
    write_webm(videos / "101.webm", n=10)
    write_webm(videos / "102.webm", n=14, seed=1)
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0",
                                                      "Pushing something from left to right": "1"}))
    (tmp_path / "validation.json").write_text(json.dumps([
        {"id": "101", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
        {"id": "102", "label": "pushing a pen", "template": "Pushing [something] from left to right"},
        {"id": "103", "label": "holding it", "template": "Holding [something]"},  # no video
    ]))
    out = tmp_path / "shards"
    rc = make_shards.main(["ssv2", "--labels", str(tmp_path / "labels.json"), "--split-file",
                           str(tmp_path / "validation.json"), "--videos", str(videos), "--out", str(out),
                           "--name", "val", "--copy", "--workers", "1", "--no-progress"])
    assert rc == 0
    m = read_manifest(out)
    assert m["classes"] == ["Holding something", "Pushing something from left to right"]
    metas = shard_metas(out, "val")
    assert metas["101"][0]["label"] == 0 and metas["102"][0]["label"] == 1
    assert metas["101"][1] == "webm" and metas["101"][0]["frames"] == 10 and metas["102"][0]["frames"] == 14
    assert [r[1] for r in read_failures(out / "val-failures.csv")] == ["missing video file"]
    # the loader decodes the webm samples: SSv2 test, segment sampling, 3 crops
    loader = build_eval_loader(str(out / m["url_pattern"]), frames=4, crop=32, num_clips=1, num_crops=3,
                               sampling="segment", batch_size=3, num_workers=0)
    got = {(vid, int(v)): int(lb) for b in loader for vid, v, lb in zip(b["video_id"], b["view"], b["label"])}
    assert got == {("101", 0): 0, ("101", 1): 0, ("101", 2): 0, ("102", 0): 1, ("102", 1): 1, ("102", 2): 1}


def test_class_folders(tmp_path):
    for i, name in enumerate(["walk", "run", "jump"]):
        write_mp4(tmp_path / "data" / name / f"v{i}.mp4", seed=i)
    write_mp4(tmp_path / "data" / "run" / "nested" / "deep.mp4", seed=9)
    (tmp_path / "data" / "run" / "notes.txt").write_text("not a video")
    out = tmp_path / "shards"
    assert make_shards.main(["folders", str(tmp_path / "data"), "--out", str(out), "--no-progress",
                             "--workers", "2", "--short-side", "16"]) == 0
    m = read_manifest(out)
    assert m["classes"] == ["jump", "run", "walk"] and m["per_class"] == [1, 2, 1]
    metas = shard_metas(out, "train")
    assert metas["deep"][0]["label_name"] == "run" and metas["deep"][0]["label"] == 1
    assert metas["v0"][0]["height"] == 16 and metas["v0"][0]["width"] == 24  # short side 16, even sides


@pytest.mark.parametrize("kind", ["folder", "glob", "list"])
def test_unlabeled_inputs(tmp_path, kind):
    raw = tmp_path / "raw"
    write_mp4(raw / "a.mp4")
    write_mp4(raw / "sub" / "b.mp4", seed=1)
    write_mp4(raw / "sub" / "c.mov", seed=2)
    if kind == "folder":
        source, expected = str(raw), {"a", "b", "c"}
    elif kind == "glob":
        source, expected = str(raw / "**" / "*.mp4"), {"a", "b"}
    else:
        (raw / "list.txt").write_text("a.mp4\n# comment\nsub/c.mov\nmissing.mp4\n")
        source, expected = str(raw / "list.txt"), {"a", "c"}
    out = tmp_path / "shards"
    assert make_shards.main(["unlabeled", source, "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    m = read_manifest(out / "data-manifest.json")
    assert m["classes"] == [] and m["total"] == len(expected)
    metas = shard_metas(out, "data")
    assert set(metas) == expected
    assert all(meta["label"] == -1 and meta["label_name"] is None for meta, _ in metas.values())
    failures = read_failures(out / "data-failures.csv")
    assert failures == ([[str(raw / "missing.mp4"), "file not found"]] if kind == "list" else [])


def run_cli(capsys, args):
    rc = make_shards.main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc, err = run_cli(capsys, ["kinetics", "--csv", str(tmp_path / "missing.csv"), "--videos", str(tmp_path),
                               "--out", str(tmp_path / "o")])
    assert rc == 2 and err.startswith("error:") and "missing.csv" in err and len(err.splitlines()) == 1
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nx,y,0,1,train\n")
    rc, err = run_cli(capsys, ["kinetics", "--csv", str(tmp_path / "k.csv"), "--videos", str(tmp_path / "nope"),
                               "--out", str(tmp_path / "o")])
    assert rc == 2 and "video folder not found" in err and len(err.splitlines()) == 1
    rc, err = run_cli(capsys, ["unlabeled", str(tmp_path / "none*.mp4"), "--out", str(tmp_path / "o")])
    assert rc == 2 and len(err.splitlines()) == 1
    rc, err = run_cli(capsys, ["folders", str(tmp_path), "--out", str(tmp_path / "o"), "--gop", "64"])
    assert rc == 2 and "--gop" in err
    (tmp_path / "bad.json").write_text("{not json")
    rc, err = run_cli(capsys, ["ssv2", "--labels", str(tmp_path / "bad.json"), "--split-file",
                               str(tmp_path / "bad.json"), "--videos", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.tar"))


def test_size_parsing():
    assert make_shards.parse_size("500MB") == 500_000_000
    assert make_shards.parse_size("2GiB") == 2 * 1024**3
    assert make_shards.parse_size("1e6") == 1_000_000


def test_classes_option_fixes_indices(tmp_path):
    write_mp4(tmp_path / "data" / "b" / "x.mp4")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    out = tmp_path / "shards"
    assert make_shards.main(["folders", str(tmp_path / "data"), "--classes", str(tmp_path / "classes.txt"),
                             "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert read_manifest(out)["classes"] == ["a", "b", "c"]
    assert shard_metas(out, "train")["x"][0]["label"] == 1
    shutil.rmtree(out)


def test_kinetics_matching_never_guesses(tmp_path):
    videos = tmp_path / "k400"
    write_mp4(videos / "eeeeeeeeeee_000000_000010.mp4")  # one of two segments of an id
    write_mp4(videos / "fffffffffff.mp4", seed=1)  # id alone, but the id has two rows
    write_mp4(videos / "ggggggggggg.mp4", seed=2)  # id alone, one row: its video
    write_mp4(videos / "hhhhhhhhhhh_000005_000015.mp4", seed=3)  # listed twice
    write_mp4(videos / "a" / "iiiiiiiiiii_000000_000010.mp4", seed=4)  # two files for one row
    write_mp4(videos / "b" / "iiiiiiiiiii_000000_000010.mkv", seed=5)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows([["x", "eeeeeeeeeee", "0", "10", "train"], ["y", "eeeeeeeeeee", "20", "30", "train"],
                     ["x", "fffffffffff", "0", "10", "train"], ["y", "fffffffffff", "30", "40", "val"],
                     ["x", "ggggggggggg", "3", "13", "train"],
                     ["x", "hhhhhhhhhhh", "5", "15", "train"], ["y", "hhhhhhhhhhh", "5", "15", "train"],
                     ["x", "iiiiiiiiiii", "0", "10", "train"]])
    out = tmp_path / "shards"
    assert make_shards.main(["kinetics", "--csv", str(tmp_path / "train.csv"), "--videos", str(videos), "--split",
                             "train", "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    metas = shard_metas(out, "train")
    assert sorted(metas) == ["eeeeeeeeeee_000000_000010", "ggggggggggg", "hhhhhhhhhhh_000005_000015"]
    assert read_manifest(out)["total"] == 3  # every file stored once
    failures = dict(read_failures(out / "train-failures.csv"))
    assert failures == {
        "eeeeeeeeeee_000020_000030": "missing video file (other segments of eeeeeeeeeee: "
                                     "eeeeeeeeeee_000000_000010.mp4)",
        "fffffffffff_000000_000010": "ambiguous: fffffffffff.mp4 is named by the id alone and fffffffffff has "
                                     "2 rows in the CSV",
        "hhhhhhhhhhh_000005_000015": "ambiguous: hhhhhhhhhhh_000005_000015.mp4 is already the video of "
                                     "hhhhhhhhhhh_000005_000015",
        "iiiiiiiiiii_000000_000010": "ambiguous: 2 files match (iiiiiiiiiii_000000_000010.mp4, "
                                     "iiiiiiiiiii_000000_000010.mkv)",
    }


def test_ssv2_ids_match_whole_stems_once(tmp_path):
    videos = tmp_path / "ssv2"
    write_webm(videos / "7.webm")
    write_webm(videos / "77.webm", seed=1)  # "7" must not take it
    write_webm(videos / "8.webm", seed=2)
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    entry = {"template": "Holding [something]"}
    (tmp_path / "train.json").write_text(json.dumps([{"id": "7", **entry}, {"id": "8", **entry},
                                                     {"id": "8", **entry}, {"id": "9", **entry}]))
    found = make_shards.ssv2_sources(str(tmp_path / "labels.json"), str(tmp_path / "train.json"), str(videos))
    assert [Path(v.path).name for v in found.videos] == ["7.webm", "8.webm"]
    assert found.missing == [("8.webm", "ambiguous: 8.webm is already the video of id 8"),
                             ("9.webm", "missing video file")]
