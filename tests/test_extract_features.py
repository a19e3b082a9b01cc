"""scripts/extract_features.py on tiny shards: the file's layout, its agreement with a direct
forward pass over the eval loader's clips, worker-independence, frozen_eval sharing the same
extraction, and one-line errors."""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import mvit
from finetune import evaluate
from finetune.evaluate import load_features

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "extract_features.py"
MODEL = "mvitv2_demo_8x2_maskfeat"
CLIP = ["--frames", "8", "--stride", "1", "--crop", "64", "--device", "cpu"]


def load_script():
    spec = importlib.util.spec_from_file_location("extract_features", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = load_script().main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    root = tmp_path_factory.mktemp("xf_data")
    labels = ("circle_left", "square_right", "triangle_up")
    videos = write_synthetic_videos(root / "videos", 6, frames=24, size=(64, 80), seed=4, labels=labels)
    manifest = write_shards(videos, root / "shards", name="val", max_count=3, short_side=64, classes=list(labels))
    assert len(manifest["shards"]) == 2  # two shards: two workers read different ones
    truth = {}  # video id -> label, read from the tar files themselves, not through the loader
    for shard in manifest["shards"]:
        with tarfile.open(root / "shards" / shard["file"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    truth[meta["id"]] = meta["label"]
    torch.manual_seed(0)
    export = root / "encoder.safetensors"
    mvit.save_safetensors(mvit.create_model(MODEL, pretraining=True), export, {"model_name": MODEL})
    return {"urls": str(root / "shards" / manifest["url_pattern"]), "truth": truth, "export": str(export)}


def direct_forward(export, urls, *, clips, crops):
    """{(video id, view): patch tokens (N, D)} of model.forward_features on the eval loader's clips."""
    from videodata import build_eval_loader
    model = mvit.create_model(MODEL, input_size=(8, 64, 64))
    mvit.load_pretrained(model, export, allow_new_head=True, allow_pretraining_keys=True)
    assert model.num_prefix_tokens == 1
    loader = build_eval_loader(urls, frames=8, stride=1, crop=64, num_clips=clips, num_crops=crops, batch_size=3,
                               num_workers=0)
    out = {}
    with torch.no_grad():
        for batch in loader:
            tokens = model.eval().forward_features(batch["video"])  # (B, 1 + N, D)
            for i, (vid, view) in enumerate(zip(batch["video_id"], batch["view"].tolist())):
                out[vid, view] = tokens[i, 1:]
    return out, list(model.feature_grid((8, 64, 64)))


def test_multiview_features_match_a_direct_forward_pass(data, tmp_path):
    out = tmp_path / "sub" / "features.safetensors"  # the folder is created
    assert extract(["--init", data["export"], "--data", data["urls"], "--out", str(out), *CLIP, "--clips", "2",
                    "--crops", "2", "--tokens", "--batch-size", "5", "--num-workers", "1"]) == 0
    f = load_features(out)
    ids = sorted(data["truth"])
    assert f["video_ids"] == ids and len(ids) == 6
    assert f["labels"].dtype == torch.int64 and f["labels"].tolist() == [data["truth"][v] for v in ids]
    assert (f["init"], f["model_name"], f["views"], f["pool"]) == (data["export"], MODEL, "2x2", "mean")
    assert json.loads(f["init_report"])["dropped"] == ["mask_token"]

    direct, grid = direct_forward(data["export"], data["urls"], clips=2, crops=2)
    t, h, w = f["grid"]
    assert f["grid"] == grid
    D = f["features"].shape[1]
    assert f["features"].shape == (6, D) and f["features"].dtype == torch.float32
    assert f["view_features"].shape == (6, 4, D)
    assert f["tokens"].shape == (6, 4, t, h, w, D)
    assert sorted(direct) == [(v, k) for v in ids for k in range(4)]
    for i, vid in enumerate(ids):
        views = torch.stack([direct[vid, k].mean(0) for k in range(4)])  # (V, D) mean-pooled patch tokens
        torch.testing.assert_close(f["view_features"][i], views, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(f["features"][i], views.mean(0), rtol=1e-4, atol=1e-5)
        for k in range(4):
            torch.testing.assert_close(f["tokens"][i, k].reshape(t * h * w, D), direct[vid, k], rtol=1e-4, atol=1e-5)
    # the views are different clips / crops, so averaging them is not a no-op
    assert not torch.allclose(f["view_features"][:, 0], f["view_features"][:, 1], atol=1e-3)
    assert not torch.allclose(f["view_features"][:, 0], f["view_features"][:, 2], atol=1e-3)


def test_one_or_two_workers_write_the_same_rows(data, tmp_path):
    files = {}
    for workers in (1, 2):
        files[workers] = tmp_path / f"w{workers}.safetensors"
        assert extract(["--init", "none", "--data", data["urls"], "--out", str(files[workers]), *CLIP,
                        "--batch-size", "4", "--num-workers", str(workers)]) == 0
    one, two = load_features(files[1]), load_features(files[2])
    assert one["video_ids"] == two["video_ids"] == sorted(data["truth"])
    assert torch.equal(one["labels"], two["labels"])
    assert one["init"] == "none" and one["init_report"] == "null" and one["views"] == "1x1"
    assert one["view_features"].shape == (6, 1, one["features"].shape[1]) and "tokens" not in one
    # the same seeded random init and the same clips: the same features whatever order the
    # workers deliver them in, and (metadata in a fixed order) the same bytes
    assert torch.equal(one["features"], two["features"]) and torch.equal(one["view_features"][:, 0], one["features"])
    assert files[1].read_bytes() == files[2].read_bytes()


def test_frozen_eval_extracts_the_same_features(data, tmp_path, monkeypatch):
    from finetune import run as finetune_run
    calls = []
    real = evaluate.extract_video_features

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(evaluate, "extract_video_features", spy)
    out = tmp_path / "frozen"
    rc = finetune_run.main([f"data.train={data['urls']}", f"data.val={data['urls']}", "frozen_eval=true",
                            f"init={data['export']}", f"train.output_dir={out}", f"model.name={MODEL}",
                            "data.frames=8", "data.stride=1", "data.crop=64", "data.num_workers=1",
                            "train.batch_size=4", "train.progress=false"])
    assert rc == 0
    assert json.loads((out / "frozen_metrics.json").read_text())["train_videos"] == 6
    assert len(calls) == 2  # train and val split
    monkeypatch.undo()

    path = tmp_path / "features.safetensors"
    assert extract(["--init", data["export"], "--data", data["urls"], "--out", str(path), *CLIP,
                    "--batch-size", "4", "--num-workers", "1"]) == 0
    f = load_features(path)
    assert calls[0].ids == f["video_ids"]
    assert torch.equal(calls[0].features, f["features"]) and torch.equal(calls[0].labels, f["labels"])


def one_error_line(capsys, argv) -> str:
    assert extract(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    common = ["--data", data["urls"], *CLIP]
    missing = tmp_path / "nope.safetensors"
    r = subprocess.run([sys.executable, str(SCRIPT), "--init", str(missing), *common, "--out",
                        str(tmp_path / "f.safetensors")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: init: no such file") and str(missing) in r.stderr
    assert not (tmp_path / "f.safetensors").exists()

    out = ["--out", str(tmp_path / "f.safetensors")]
    err = one_error_line(capsys, ["--init", data["export"], "--data", str(tmp_path / "x-{000000..000003}.tar"),
                                  *CLIP, *out])
    assert "no shard file matches" in err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = one_error_line(capsys, ["--init", data["export"], *common, "--out", str(blocker / "f.safetensors")])
    assert "cannot write to folder" in err and str(blocker) in err

    # The architecture comes from the export: its metadata, else model_config.json beside it.
    named = tmp_path / "named" / "encoder.safetensors"
    named.parent.mkdir()
    mvit.save_safetensors(mvit.create_model(MODEL, pretraining=True), named, {"model_name": "mvitv2_nope"})
    assert "'mvitv2_nope'" in one_error_line(capsys, ["--init", str(named), *common, *out])
    bare = tmp_path / "bare" / "encoder.safetensors"
    bare.parent.mkdir()
    mvit.save_safetensors(mvit.create_model(MODEL, pretraining=True), bare)
    (bare.parent / "model_config.json").write_text(json.dumps({"model_name": "mvitv2_also_nope"}))
    assert "'mvitv2_also_nope'" in one_error_line(capsys, ["--init", str(bare), *common, *out])
    assert not (tmp_path / "f.safetensors").exists()
