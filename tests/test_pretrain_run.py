"""End-to-end runs of the real pretraining entry point on tiny shards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mvit

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "pretrain" / "run.py")
TINY = ["data.frames=4", "data.crop=64", "data.num_workers=1", "train.batch_size=2", "train.progress=false",
        "model.arch={depths: [1, 1, 1, 1], embed_dim: 16}", "train.log_every=1", "train.image_every=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    root = tmp_path_factory.mktemp("pt_data")
    videos = write_synthetic_videos(root / "videos", 8, frames=24, size=(72, 96), seed=3)
    manifest = write_shards(videos, root / "shards", name="train", max_count=4, short_side=72)
    assert manifest["total"] == 8 and len(manifest["shards"]) == 2
    return str(root / "shards" / manifest["url_pattern"])


def run(args, *, launcher=(sys.executable,), env=None):
    r = subprocess.run([*launcher, RUN, *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **(env or {})}, timeout=600)
    return r


def scalars(out_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    values = {}
    for f in sorted(Path(out_dir).rglob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            values.setdefault(tag, {}).update({e.step: e.value for e in ea.Scalars(tag)})
        values.setdefault("_images", set()).update(ea.Tags()["images"])
    return values


def test_cli_runs_checkpoints_logs_and_exports(shards, tmp_path):
    out = tmp_path / "run"
    r = run([f"data.train={shards}", f"train.output_dir={out}", "train.steps=4", "train.warmup_steps=1",
             "train.save_every=2", "train.keep_last=1", *TINY, "train.log_every=2"],
            launcher=("accelerate", "launch", "--num_processes", "1", "--cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done at step 4" in r.stdout and "encoder export" in r.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000004"]  # keep_last=1, no temp dirs
    saved = (out / "config.yaml").read_text()
    assert "steps: 4" in saved and "depths" in saved
    logged = scalars(out)
    for tag in ["train/loss", "train/lr", "train/grad_norm", "train/clips_per_s", "train/data_wait_fraction",
                "data/skipped_samples", "train/loss_hog"]:
        assert sorted(logged[tag]) == [2, 4], tag
    # 4 steps × 2 clips = the 8 videos of the manifest: exactly one epoch
    assert logged["train/epoch"][4] == pytest.approx(1.0) and logged["train/epoch"][2] == pytest.approx(0.5)
    assert {"mask/input", "hog/target_vs_prediction"} <= logged["_images"]

    # the export rebuilds the encoder, and loads into the finetune form of the architecture
    export = out / "export" / "encoder.safetensors"
    encoder = mvit.model_from_safetensors(export)
    assert encoder.mask_token is not None
    meta = json.loads((out / "export" / "model_config.json").read_text())
    ft = mvit.create_model(meta["model_name"], **{**meta["mvit_config"], "stage_q_strides": [[1, 2, 2]] * 3,
                                                  "mask_token": False, "final_norm": True, "num_classes": 3})
    report = mvit.load_pretrained(ft, export, allow_pretraining_keys=True, allow_new_head=True)
    assert report.dropped == ["mask_token"] and set(report.missing) == {"norm.weight", "norm.bias",
                                                                        "head.weight", "head.bias"}
    torch.testing.assert_close(ft.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)


def test_resume_continues_step_counter_and_lr(shards, tmp_path):
    out = tmp_path / "run"
    common = [f"data.train={shards}", f"train.output_dir={out}", "train.steps=6", "train.warmup_steps=2",
              "optim.lr=2e-3", "train.save_every=100", *TINY]
    first = run([*common, "train.stop_after=3"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped at step 3 of 6" in first.stdout
    second = run([*common, "train.resume=latest"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "done at step 6" in second.stdout
    lr = scalars(out)["train/lr"]
    assert sorted(lr) == [1, 2, 3, 4, 5, 6]
    # the lr is a function of the step: the same as one uninterrupted schedule
    from timm.scheduler import CosineLRScheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3 * 2 / 32)
    sched = CosineLRScheduler(opt, t_initial=4, lr_min=1e-6, warmup_t=2, warmup_lr_init=1e-6, warmup_prefix=True,
                              t_in_epochs=False)
    for step in range(1, 7):
        sched.step_update(step)
        assert lr[step] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-5), step
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_resume_with_another_global_batch_says_how_the_schedule_changes(shards, tmp_path):
    """Processes x batch_size x grad_accum may change between runs (another world size); the
    schedule then follows the new global batch, and one line says so with the resumed lr."""
    out = tmp_path / "run"
    common = [f"data.train={shards}", f"train.output_dir={out}", "train.steps=6", "train.warmup_steps=2",
              "optim.lr=2e-3", "train.save_every=100", *TINY]
    assert run([*common, "train.stop_after=2"]).returncode == 0
    second = run([*common, "train.resume=latest", "train.batch_size=4", "train.stop_after=1"])
    assert second.returncode == 0, second.stderr[-3000:]
    from timm.scheduler import CosineLRScheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3 * 4 / 32)
    CosineLRScheduler(opt, t_initial=4, lr_min=1e-6, warmup_t=2, warmup_lr_init=1e-6, warmup_prefix=True,
                      t_in_epochs=False).step_update(2)
    line = next(x for x in second.stdout.splitlines() if x.startswith("note: the global batch"))
    assert "changed from 2 to 4 clips per step" in line
    assert f"lr {opt.param_groups[0]['lr']:.3g} at step 2, peak {2e-3 * 4 / 32:.3g}, 6 steps in all" in line
    third = run([*common, "train.resume=latest", "train.batch_size=4", "train.stop_after=1"])
    assert "note: the global batch" not in third.stdout  # recorded: said once


def test_two_cpu_processes_split_data_and_stay_in_sync(shards, tmp_path):
    out = tmp_path / "ddp"
    r = run([f"data.train={shards}", f"train.output_dir={out}", "train.steps=3", "train.warmup_steps=1",
             "train.audit=true", *TINY],
            launcher=("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no"),
            env={"ACCELERATE_USE_CPU": "true", "ACCELERATE_USE_FSDP": "true"})  # as configs/accelerate/fsdp.yaml
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'processes': 2, 'distributed': 'DDP', 'precision': 'no'" in r.stdout and "'global_batch': 4" in r.stdout
    notice = [x for x in r.stderr.splitlines() if "FSDP" in x]
    assert notice == ["note: FSDP was asked for but does not apply on CPU: Accelerate runs DDP, and every process "
                      "holds the whole model"]
    audits = [json.loads((out / "audit" / f"rank{i}.json").read_text()) for i in (0, 1)]
    seen = [set(a["samples"]) for a in audits]
    assert all(len(s) >= 2 for s in seen) and not (seen[0] & seen[1])
    assert audits[0]["param_checksum"] == audits[1]["param_checksum"]


def test_bad_config_key_is_one_line(tmp_path):
    r = run(["optim.lrr=1"])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "lrr" in r.stderr and "Traceback" not in r.stderr
    r = run(["train.steps=many"])
    assert r.returncode == 2 and "train.steps" in r.stderr and r.stderr.count("\n") == 1


def test_value_that_is_not_yaml_is_one_line(tmp_path):
    """An override or a config file that YAML cannot parse names itself, in one line."""
    r = run(["model.arch={depths: [4"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "'model.arch={depths: [4'" in r.stderr and "not valid YAML" in r.stderr
    bad = tmp_path / "recipe.yaml"
    bad.write_text("optim:\n  lr: [1e-3\n")
    r = run(["--config", str(bad)])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"{bad} is not valid YAML" in r.stderr


def test_help_lists_options():
    r = run(["--help"])
    assert r.returncode == 0
    for key in ["optim.lr", "train.resume", "mask.ratio", "data.train", "model.name"]:
        assert key in r.stdout


def test_recipe_placeholders_must_be_set():
    r = run(["--config", str(ROOT / "configs" / "pretrain" / "k400_mvitv2_s_16x4_maskfeat.yaml")])
    assert r.returncode == 2 and "data.train" in r.stderr and r.stderr.count("\n") == 1


def test_clips_longer_than_every_video_end_in_one_line(shards, tmp_path):
    """24-frame videos, 16x4 clips: every sample is skipped, and the run stops with the reason
    (rate-limited warnings, no traceback) instead of looping forever."""
    r = run([f"data.train={shards}", f"train.output_dir={tmp_path / 'run'}", "train.steps=2", "train.warmup_steps=1",
             *TINY, "data.frames=16", "data.stride=4"])
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: videodata: 1000 consecutive failures") and "clip needs 61" in last
    assert "Traceback" not in r.stderr and r.stderr.count("skipped") < 40


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*/k400_*.yaml")) +
                         sorted((ROOT / "configs").glob("*/ssv2_*.yaml")), ids=lambda p: p.name)
def test_recipes_count_in_epochs_not_the_demo_steps(recipe):
    """The dataclass defaults are the demo's step counts; a recipe given in epochs must zero them,
    or 300 epochs would silently become the demo's 1000 steps."""
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from pretrain.run import PretrainConfig
    pretraining = recipe.parent.name == "pretrain"
    required = ["data.train=x"] + ([] if pretraining else ["data.val=y", "init=z"])
    cfg = parse_config(PretrainConfig if pretraining else FinetuneConfig, ["--config", str(recipe), *required])
    assert cfg.train.epochs > 0 and cfg.train.steps == 0 and cfg.train.warmup_steps == 0


def test_main_process_makes_no_masks(shards, tmp_path):
    """The loader's workers make every batch's masks; the training process never calls the masker
    (images included: they show the batch's mask)."""
    out = tmp_path / "run"
    code = ("import sys; import pretrain.maskfeat as m\n"
            "def boom(*a, **k): raise AssertionError('mask made in the main process')\n"
            "m.MaskFeat.make_masks = boom\n"
            "from pretrain.run import main; sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, f"data.train={shards}", f"train.output_dir={out}",
                        "train.steps=2", "train.warmup_steps=1", *TINY, "train.image_every=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mask/input" in scalars(out)["_images"]
    assert scalars(out)["train/mask_fraction"][2] > 0.3


def test_mask_unit_that_does_not_tile_is_one_line(tmp_path):
    r = run([f"train.output_dir={tmp_path / 'run'}", *TINY, "mask.unit=[1,3,3]"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "mask.unit [1, 3, 3] does not tile the patch grid [2, 16, 16]" in r.stderr


def test_a_log_file_gets_one_progress_line_per_log_window(shards, tmp_path):
    """Output to a file (not a terminal): no progress-bar redraws, one line per log window."""
    out = tmp_path / "run"
    r = run([f"data.train={shards}", f"train.output_dir={out}", "train.steps=4", "train.warmup_steps=1",
             "train.save_every=4", *TINY, "train.progress=true", "train.log_every=2", "train.image_every=0"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr  # tqdm redraws with carriage returns
    lines = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"], r.stderr[-2000:]
    assert all(" loss " in line and " clips/s " in line for line in lines)
