"""Sharded training that finishes: both entry points under Accelerate's FSDP2 plugin, forced
on two CPU processes (gloo) by tests/fsdp_cpu.py, since Accelerate drops the plugin on CPU.
Training, sharded checkpoints, resume, TensorBoard pictures, the audit, the exports (gathered
from the shards, same keys and shapes as a plain model's), evaluation, eval_only and
frozen_eval all run, and the exports hold the checkpointed weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mvit

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "tests" / "fsdp_cpu.py")]
ARCH = "model.arch={depths: [1, 1, 1, 1], embed_dim: 16}"
TINY = ["data.frames=4", "data.crop=64", "data.num_workers=1", "train.batch_size=2", "train.progress=false",
        "train.log_every=1", ARCH]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    root = tmp_path_factory.mktemp("fsdp_data")
    labels = ("circle_left", "square_right")
    out = {}
    for split, n, seed in (("train", 4, 1), ("val", 4, 2)):
        videos = write_synthetic_videos(root / split, n, frames=24, size=(72, 96), seed=seed, labels=labels)
        m = write_shards(videos, root / "shards", name=split, max_count=2, short_side=72, classes=list(labels))
        out[split] = str(root / "shards" / m["url_pattern"])
    return out


def launch(stage: str, args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run([*LAUNCH, str(ROOT / stage / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "ACCELERATE_USE_CPU": "true"}, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def checkpoint_weights(folder: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The full model state of a sharded (torch.distributed.checkpoint) save_state folder."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    shards = folder / "pytorch_model_fsdp_0"
    assert shards.is_dir() and not (folder / "model.safetensors").exists()  # really sharded
    dcp_to_torch_save(shards, tmp_path / "full.pt")
    state = torch.load(tmp_path / "full.pt", weights_only=True)
    return state.get("model", state)


def assert_export_holds(export: Path, weights: dict, prefix: str, expected: torch.nn.Module):
    exported = load_file(str(export))
    plain = expected.state_dict()
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in plain.items()}
    for k, v in exported.items():
        torch.testing.assert_close(v, weights[prefix + k], atol=0, rtol=0, msg=k)


def test_fsdp2_pretrain_resume_export_then_finetune_and_evaluate(data, tmp_path):
    pre = tmp_path / "pre"
    common = [f"data.train={data['train']}", f"train.output_dir={pre}", "train.steps=4", "train.warmup_steps=1",
              "train.save_every=2", "train.image_every=2", "train.audit=true", *TINY]
    r = launch("pretrain", [*common, "train.stop_after=2"])
    assert "'distributed': 'FSDP2'" in r.stdout and "stopped at step 2" in r.stdout
    r = launch("pretrain", [*common, "train.resume=latest"])
    assert "resumed from" in r.stdout and "at step 2" in r.stdout and "done at step 4" in r.stdout
    # audit: the gathered weights agree on both ranks
    audits = [json.loads((pre / "audit" / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert audits[0]["param_checksum"] == audits[1]["param_checksum"]
    from test_pretrain_run import scalars
    assert {"mask/input", "hog/target_vs_prediction"} <= scalars(pre)["_images"]
    # the export: the whole encoder, exactly the final checkpoint's weights
    weights = checkpoint_weights(pre / "checkpoints" / "step_00000004", tmp_path)
    encoder = mvit.model_from_safetensors(pre / "export" / "encoder.safetensors")
    assert_export_holds(pre / "export" / "encoder.safetensors", weights, "encoder.", encoder)

    ft = tmp_path / "ft"
    ft_args = [f"data.train={data['train']}", f"data.val={data['val']}",
               f"init={pre / 'export' / 'encoder.safetensors'}", "train.steps=2", "train.warmup_steps=1", "val_every=1", "ema_decay=0.5", "data.test_clips=1",
               "compare_scratch=false", *TINY]
    r = launch("finetune", [*ft_args, f"train.output_dir={ft}"])
    assert "'distributed': 'FSDP2'" in r.stdout
    tested = json.loads((ft / "test_metrics.json").read_text())
    assert tested["videos"] == 4
    weights = checkpoint_weights(ft / "checkpoints" / "step_00000002", tmp_path)
    model = mvit.model_from_safetensors(ft / "export" / "model.safetensors")
    assert_export_holds(ft / "export" / "model.safetensors", weights, "ema.module.", model)  # the EMA is exported

    ev = tmp_path / "eval"
    launch("finetune", [*ft_args, f"train.output_dir={ev}", "eval_only=true",
                        f"init={ft / 'export' / 'model.safetensors'}"])
    assert json.loads((ev / "test_metrics.json").read_text()) == tested  # the same model, the same numbers
    fr = tmp_path / "frozen"
    launch("finetune", [*ft_args, f"train.output_dir={fr}", "frozen_eval=true"])
    frozen = json.loads((fr / "frozen_metrics.json").read_text())
    assert frozen["train_videos"] == 4 and frozen["val_videos"] == 4


def test_a_sharded_checkpoint_folder_as_init_is_one_line(tmp_path):
    from mvit import CheckpointError
    from pretrain.runtime import checkpoint_weights
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    with pytest.raises(CheckpointError, match="a sharded FSDP checkpoint .* start from the run's export"):
        checkpoint_weights(tmp_path)
    (tmp_path / "pytorch_model_fsdp_0").rmdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        checkpoint_weights(tmp_path)
