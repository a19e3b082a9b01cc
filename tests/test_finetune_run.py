"""End-to-end runs of the real finetuning entry point on tiny labelled shards."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mvit

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "finetune" / "run.py")
ARCH = "model.arch={depths: [1, 1, 1, 1], embed_dim: 16}"
TINY = ["data.frames=4", "data.crop=64", "data.num_workers=1", "train.batch_size=4", "train.progress=false",
        "data.test_clips=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    root = tmp_path_factory.mktemp("ft_data")
    labels = ("circle_left", "square_right", "triangle_up")
    train = write_synthetic_videos(root / "train", 6, frames=24, size=(72, 96), seed=1, labels=labels)
    val = write_synthetic_videos(root / "val", 5, frames=24, size=(72, 96), seed=2, labels=labels)
    m_train = write_shards(train, root / "shards", name="train", max_count=3, short_side=72, classes=list(labels))
    m_val = write_shards(val, root / "shards", name="val", max_count=3, short_side=72, classes=list(labels))
    shards = root / "shards"
    return {"train": str(shards / m_train["url_pattern"]), "val": str(shards / m_val["url_pattern"]),
            "classes": list(labels), "val_per_class": m_val["per_class"], "root": root}


def run(args, timeout=600):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ})


def data_args(d):
    return [f"data.train={d['train']}", f"data.val={d['val']}"]


def tiny_encoder(**kw):
    return mvit.create_model("mvitv2_s_16x4_maskfeat", depths=(1, 1, 1, 1), embed_dim=16, input_size=(4, 64, 64),
                             **kw)


def test_finetune_from_pretraining_export_then_multiview_test(data, tmp_path):
    torch.manual_seed(0)
    export = tmp_path / "encoder.safetensors"
    mvit.save_safetensors(tiny_encoder(pretraining=True), export)
    out = tmp_path / "ft"
    r = run([*data_args(data), f"init={export}", f"train.output_dir={out}", "model.name=mvitv2_s_16x4_maskfeat",
             ARCH, "train.steps=3", "train.warmup_steps=1", "val_every=2", "ema_decay=0.9", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "init_report.json").read_text())
    assert report["dropped"] == ["mask_token"] and "head.weight" in report["missing"]
    assert "test (2x1 views)" in r.stdout
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 5 and all(row["num_views"] == "2" for row in rows)
    assert {row["label_name"] for row in rows} <= set(data["classes"])
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["videos"] == 5 and 0 <= metrics["top1"] <= 1
    assert (out / "export" / "model.safetensors").is_file()


def test_compare_scratch_trains_the_random_init_baseline_once_and_prints_both(data, tmp_path):
    torch.manual_seed(0)
    export = tmp_path / "encoder.safetensors"
    mvit.save_safetensors(tiny_encoder(pretraining=True), export)
    out = tmp_path / "ft"
    args = [*data_args(data), f"init={export}", f"train.output_dir={out}", "model.name=mvitv2_s_16x4_maskfeat",
            ARCH, "train.steps=2", "train.warmup_steps=1", "val_every=0", "compare_scratch=true", *TINY]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "baseline: the same finetuning from random init" in r.stdout
    scratch = json.loads((out / "scratch" / "init_report.json").read_text()) if (
        out / "scratch" / "init_report.json").exists() else None
    assert scratch is None  # the baseline loaded nothing
    assert "init: none" in (out / "scratch" / "config.yaml").read_text()
    rows = json.loads((out / "comparison.json").read_text())
    assert list(rows) == [f"from {export}", "from random init"]
    assert rows["from random init"]["top1"] == json.loads((out / "scratch" / "test_metrics.json").read_text())["top1"]
    for row in rows.values():
        assert set(row) == {"top1", "top5", "knn_top1", "linear_probe_top1"}
    assert (out / "frozen_init" / "frozen_metrics.json").is_file() and (out / "frozen_random" / "frozen_metrics.json").is_file()
    assert "from random init" in r.stdout.splitlines()[-1]  # the table ends the run
    # a second run with the same recipe reuses the baseline; another recipe trains it again
    r = run(args)
    assert r.returncode == 0 and "baseline:" not in r.stdout, r.stderr[-3000:]
    r = run([*args, "optim.lr=1e-3"])
    assert r.returncode == 0 and "baseline:" in r.stdout, r.stderr[-3000:]


def test_finetune_from_inflated_image_checkpoint(data, tmp_path):
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
    torch.manual_seed(0)
    image = MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16), img_size=(64, 64), num_classes=1000)
    ckpt = tmp_path / "timm_image.pth"
    torch.save(image.state_dict(), ckpt)
    out = tmp_path / "ft"
    r = run([*data_args(data), f"init={ckpt}", f"train.output_dir={out}", "model.name=mvitv2_s_16x4",
             "model.arch={depths: [1, 1, 1, 1], embed_dim: 16, kv_stride: [1, 4, 4]}", "train.steps=2",
             "train.warmup_steps=1", "val_every=0", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "init_report.json").read_text())
    assert report["source_format"] == "timm"
    assert "patch_embed.proj.weight" in report["inflated"] and "blocks.0.attn.pool_q.weight" in report["inflated"]
    assert set(report["missing"]) == {"cls_token", "head.weight", "head.bias"}  # new class token and head


def test_eval_only_aggregates_views_and_keeps_label_names(data, tmp_path):
    """A classifier that always answers class 1: top-1 must be that class's share of the
    val videos, every video listed once with its views averaged and its label's name."""
    model = tiny_encoder(num_classes=3)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    weights = tmp_path / "model.safetensors"
    mvit.save_safetensors(model, weights)
    out = tmp_path / "eval"
    r = run([*data_args(data), "eval_only=true", f"init={weights}", f"train.output_dir={out}",
             "model.name=mvitv2_s_16x4_maskfeat", ARCH, *TINY, "data.test_clips=3", "data.test_crops=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(data["val_per_class"][1] / 5)
    assert metrics["views"] == "3x2"
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert sorted(r["video_id"] for r in rows) == sorted({r["video_id"] for r in rows}) and len(rows) == 5
    assert all(r["pred_name"] == "square_right" and r["num_views"] == "6" for r in rows)
    for row in rows:
        assert row["label_name"] == data["classes"][int(row["label"])]
    per_class = list(csv.DictReader(open(out / "test_per_class.csv")))
    assert [p["class_name"] for p in per_class] == data["classes"]


def test_mismatched_init_fails_with_one_line(data, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    mvit.save_safetensors(mvit.create_model("mvitv2_s_16x4_maskfeat", depths=(1, 1, 2, 1), embed_dim=16,
                                            input_size=(4, 64, 64)), wrong)
    r = run([*data_args(data), f"init={wrong}", f"train.output_dir={tmp_path / 'x'}", ARCH, *TINY,
             "model.name=mvitv2_s_16x4_maskfeat", "train.steps=2"])
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1 and "does not fit" in r.stderr
    r = run([*data_args(data), f"init={tmp_path / 'nope.safetensors'}", ARCH, *TINY])
    assert r.returncode == 2 and "no such file" in r.stderr and r.stderr.count("\n") == 1


def test_mae_export_needs_its_model_and_task_mae_brings_it(data, tmp_path):
    """An MAE demo export (a ViT) given to the default (MViT) finetuning names the settings that fit it;
    task=mae selects the ViT and finetunes from it."""
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    cfg = parse_config(FinetuneConfig, ["task=mae"])
    assert (cfg.model.name, cfg.data.crop, cfg.init) == ("vit_demo_8x2", 96,
                                                         "runs/pretrain-demo-mae/export/encoder.safetensors")
    assert parse_config(FinetuneConfig, ["task=mae", "data.crop=64"]).data.crop == 64  # overrides still win
    vit = {"depths": (1,), "embed_dim": 32, "num_heads": 2}
    export = tmp_path / "encoder.safetensors"
    mvit.save_safetensors(mvit.create_model("vit_demo_8x2", pretraining="mae", input_size=(4, 64, 64), **vit),
                          export, {"model_name": "vit_demo_8x2", "stage": "mae-pretraining"})
    r = run([*data_args(data), f"init={export}", f"train.output_dir={tmp_path / 'x'}", *TINY, "train.steps=2"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert "is an export of vit_demo_8x2 (mae-pretraining), but this run builds mvitv2_demo_8x2_maskfeat: " \
           "set model.name=vit_demo_8x2 (the MAE demo: task=mae)" in r.stderr
    out = tmp_path / "ft"
    r = run([*data_args(data), "task=mae", f"init={export}", f"train.output_dir={out}", *TINY,
             "model.arch={depths: [1], embed_dim: 32, num_heads: 2}", "train.steps=2", "train.warmup_steps=1",
             "val_every=0", "compare_scratch=false"])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "init_report.json").read_text())
    assert report["missing"] == ["head.weight", "head.bias"] and not report["dropped"], report


def test_unlabeled_training_shards_are_a_one_line_error(data, tmp_path):
    from videodata import write_shards
    videos = sorted((data["root"] / "train").rglob("*.mp4"))[:2]
    manifest = write_shards([(str(v), None) for v in videos], tmp_path / "unlabeled", name="train", short_side=72)
    r = run([f"data.train={tmp_path / 'unlabeled' / manifest['url_pattern']}", f"data.val={data['val']}", "init=none",
             "model.num_classes=3", f"train.output_dir={tmp_path / 'x'}", "model.name=mvitv2_s_16x4_maskfeat",
             ARCH, *TINY, "train.steps=3", "train.warmup_steps=1", "val_every=0"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and "labelled shards" in r.stderr and "Traceback" not in r.stderr


def test_resume_and_frozen_eval(data, tmp_path):
    out = tmp_path / "ft"
    common = [*data_args(data), "init=none", f"train.output_dir={out}", "model.name=mvitv2_s_16x4_maskfeat", ARCH,
              "train.steps=4", "train.warmup_steps=1", "val_every=0", *TINY]
    first = run([*common, "train.stop_after=2"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped at step 2 of 4" in first.stdout and not (out / "test_metrics.json").exists()
    second = run([*common, "train.resume=latest"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at step 2" in second.stdout and (out / "test_metrics.json").is_file()

    r = run([*data_args(data), "frozen_eval=true", f"init={out / 'export' / 'model.safetensors'}",
             f"train.output_dir={tmp_path / 'frozen'}", "model.name=mvitv2_s_16x4_maskfeat", ARCH, *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    frozen = json.loads((tmp_path / "frozen" / "frozen_metrics.json").read_text())
    assert frozen["train_videos"] == 6 and frozen["val_videos"] == 5
    assert 0 <= frozen["knn_top1"] <= 1 and 0 <= frozen["linear_probe_top1"] <= 1


def test_two_cpu_processes_train_and_test_every_video_once(data, tmp_path):
    """DDP finetuning on two CPU processes, then the multi-view test gathered from both
    ranks (5 videos: one rank gets more): each video once with all its views, and the
    same predictions as a one-process evaluation of the exported classifier."""
    out = tmp_path / "ddp"
    common = [*data_args(data), "model.name=mvitv2_s_16x4_maskfeat", ARCH, *TINY]
    r = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", RUN, *common, "init=none",
                        f"train.output_dir={out}", "train.steps=2", "train.warmup_steps=1", "val_every=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "ACCELERATE_USE_CPU": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'processes': 2" in r.stdout
    two = {row["video_id"]: row for row in csv.DictReader(open(out / "test_predictions.csv"))}
    assert len(two) == 5 and all(row["num_views"] == "2" for row in two.values())

    single = tmp_path / "single"
    r = run([*common, "eval_only=true", f"init={out / 'export' / 'model.safetensors'}",
             f"train.output_dir={single}"])
    assert r.returncode == 0, r.stderr[-3000:]
    one = {row["video_id"]: row for row in csv.DictReader(open(single / "test_predictions.csv"))}
    assert one.keys() == two.keys()
    for vid in one:
        assert one[vid]["pred"] == two[vid]["pred"] and one[vid]["label"] == two[vid]["label"], vid
        assert float(one[vid]["prob"]) == pytest.approx(float(two[vid]["prob"]), abs=1e-5), vid


RECIPES = sorted(p for stage in ("pretrain", "finetune") for p in (ROOT / "configs" / stage).glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses_and_flips_only_where_labels_allow(recipe):
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from pretrain.run import PretrainConfig
    schema = {"finetune": FinetuneConfig, "pretrain": PretrainConfig}[recipe.parent.name]
    from omegaconf import OmegaConf
    holes = [f"{key}=x" for key in sorted(OmegaConf.missing_keys(OmegaConf.load(recipe)))]  # the user's paths
    cfg = parse_config(schema, ["--config", str(recipe), *holes])
    # Horizontal flips turn "left" motion into "right": Kinetics flips, SSv2 names
    # directions and must not; pretraining has no labels to break.
    assert cfg.data.flip == (recipe.parent.name == "pretrain" or recipe.name.startswith("k400")), recipe.name


def test_demo_finetune_does_not_flip_its_left_right_classes():
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from videodata.synthetic import LABELS
    assert any("left" in label for label in LABELS) and not parse_config(FinetuneConfig, []).data.flip
