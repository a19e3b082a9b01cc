"""train.compile and train.precision=bf16, proven on CPU with the tasks the entry points build.

compile: `build_backbone` compiles the model in place (`Module.compile`: parameter names stay
clean), and the tasks call the model, so the code that runs is the compiled code; dynamo's
counters show it. The model here has one block, so inductor builds one graph (~30 s cold on
2 cores; the on-disk FX graph cache makes the later compiles of the same graph quick).
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parents[1]
# One block at one stage, pixel targets (no HOG cells at 4 px per token): one graph per task.
ARCH = "model.arch={depths: [1], stage_q_strides: [], embed_dim: 16}"
TINY = ["data.frames=4", "data.crop=64", "data.num_workers=1", "train.batch_size=2", "train.progress=false", ARCH]
PRETRAIN = [*TINY, "mask.unit=[1,4,4]", "mask.targets=[pixel]"]


def pretrain_task(*overrides, base=PRETRAIN):
    from pretrain.config import parse_config
    from pretrain.run import PretrainConfig, build_task
    torch.manual_seed(0)
    return build_task(parse_config(PretrainConfig, [*base, *overrides]))


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def assert_same_step(eager, compiled, batch):
    """One forward + backward of each: equal losses and gradients, clean parameter names."""
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())
    before = graphs()
    losses = []
    for task in (eager, compiled):
        torch.manual_seed(1)  # the same dropout / mixing draws (timm's Mixup draws from numpy)
        np.random.seed(1)
        loss, _ = task(batch)
        loss.backward()
        losses.append(loss)
    assert graphs() > before, "nothing was compiled"
    assert math.isfinite(losses[1].item())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)  # fused kernels reorder float sums
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compiled_maskfeat_step_equals_eager():
    eager, compiled = pretrain_task(), pretrain_task("train.compile=true")
    video = torch.randn(2, 3, 4, 64, 64)
    assert_same_step(eager, compiled, {"video": video, "mask": eager.make_masks(2, "cpu")})


def test_compiled_finetuning_step_equals_eager():
    from finetune.classify import Classification
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from pretrain.runtime import build_backbone

    def task(*overrides):
        torch.manual_seed(0)
        cfg = parse_config(FinetuneConfig, [*TINY, "model.name=mvitv2_s_16x4_maskfeat", *overrides])
        return Classification(build_backbone(cfg, num_classes=3), 3, mixup=0.8, cutmix=1.0, ema_decay=0.9)

    batch = {"video": torch.randn(2, 3, 4, 64, 64), "label": torch.tensor([0, 2])}
    assert_same_step(task(), task("train.compile=true"), batch)


def run(args):
    return subprocess.run([sys.executable, str(ROOT / "pretrain" / "run.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    root = tmp_path_factory.mktemp("compile_data")
    videos = write_synthetic_videos(root / "videos", 4, frames=12, size=(72, 96), seed=3)
    return str(root / "shards" / write_shards(videos, root / "shards", name="train", max_count=4)["url_pattern"])


def test_checkpoints_move_between_compiled_and_eager_runs(shards, tmp_path):
    """compiled -> eager -> compiled, resuming from each other's checkpoints (no OptimizedModule keys)."""
    common = [f"data.train={shards}", f"train.output_dir={tmp_path}", "train.steps=3", "train.warmup_steps=1",
              "train.save_every=1", "train.log_every=1", *PRETRAIN]
    for step, compile in ((1, "true"), (2, "false"), (3, "true")):
        r = run([*common, f"train.compile={compile}", "train.stop_after=1"] + (["train.resume=latest"] if step > 1
                                                                               else []))
        assert r.returncode == 0, r.stderr[-3000:]
        assert (step == 1 or f"at step {step - 1}" in r.stdout) and f"at step {step}" in r.stdout
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert not any("_orig_mod" in k for k in keys) and "encoder.patch_embed.proj.weight" in keys


def test_bf16_step_on_cpu_keeps_targets_and_loss_in_float32():
    task = pretrain_task(base=["data.frames=4", "data.crop=64", "model.arch={depths: [1, 1, 1, 1], embed_dim: 16}",
                               "mask.unit=[1,8,8]", "mask.targets=[hog]"])
    video = torch.randn(2, 3, 4, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        units = task.make_masks(2, "cpu")
        tokens = task.forward_encoder(video, units)
        targets = task.targets(video)
        loss, report = task({"video": video, "mask": units})
    assert tokens.dtype == torch.bfloat16  # autocast is really on
    assert targets["hog"].dtype == torch.float32 and loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and p.grad.isfinite().all())
               for p in task.parameters())
    eager, _ = task({"video": video, "mask": units})
    assert abs(loss.item() - eager.item()) < 0.05 * eager.item()  # bf16 rounding, not another loss


def test_bf16_run_through_the_entry_point(shards, tmp_path):
    r = run([f"data.train={shards}", f"train.output_dir={tmp_path}", "train.steps=2", "train.warmup_steps=1",
             "train.log_every=1", "train.precision=bf16", *TINY, "mask.unit=[1,4,4]", "mask.targets=[pixel]"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'precision': 'bf16'" in r.stdout
    import json
    losses = [json.loads(x)["train/loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
