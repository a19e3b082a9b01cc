"""Starting weights for a run (`init=`), and the load report both stages print and save.

Pretraining can start from (`load_pretraining_init`):
- our encoder export (export/encoder.safetensors) or a checkpoint folder of a pretraining run
  (checkpoints/step_*: encoder and prediction heads);
- a reference SlowFast MaskFeat `.pyth` (`slowfast/models/masked.py` MaskMViT): the encoder, its
  mask token, and its prediction head, whose LayerNorm + Linear are the shapes of our HOG head;
- any other checkpoint `mvit.load_pretrained` reads: supervised video models (their head and final
  norm dropped), image models (inflated 2D -> 3D). The mask token and heads then start fresh.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import mvit
from mvit.checkpoint import CheckpointError, LoadReport, read_state_dict

from .runtime import checkpoint_weights

# The reference MaskMViT's HOG prediction head (head_helper.MSSeparateHead, one prediction depth):
# transforms.0 = Sequential(LayerNorm), projections.0 = Linear; ours: heads.hog = Sequential(LayerNorm, Linear)
REFERENCE_HEAD = {"pred_head.transforms.0.0.": "hog.0.", "pred_head.projections.0.": "hog.1."}


def no_init(init: str | None) -> bool:
    return not init or init.lower() in ("none", "scratch")


def split_task_state(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """A pretraining state dict -> (encoder state, prediction-head state in `MaskFeat.heads` names,
    keys left out). Ours (a checkpoint folder: `encoder.*`, `heads.*`, the HOG layer's fixed filters
    `hog.*`) or the reference's (encoder keys at the top, `pred_head.*`, `hogs.*`, which
    load_pretrained drops as pretraining keys)."""
    if any(k.startswith("encoder.") for k in sd):
        encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        heads = {k[len("heads."):]: v for k, v in sd.items() if k.startswith("heads.")}
        return encoder, heads, [k for k in sd if not k.startswith(("encoder.", "heads."))]
    encoder, heads = {}, {}
    for k, v in sd.items():
        ref = next((r for r in REFERENCE_HEAD if k.startswith(r)), None)
        if ref is None:
            encoder[k] = v
        else:
            heads[REFERENCE_HEAD[ref] + k[len(ref):]] = v
    return encoder, heads, []


def load_pretraining_init(task, init: str | None) -> LoadReport | None:
    """Load `init` (see the module docstring) into a MaskFeat task: the encoder through
    mvit.load_pretrained (strict: a misfit is one CheckpointError line), then the prediction heads
    the source has. Returns the report (heads the source lacks are missing: fresh); None for no init."""
    if no_init(init):
        return None
    path = Path(init)
    if path.is_dir():
        path = checkpoint_weights(path)
    sd = read_state_dict(path)
    encoder, heads, left_out = split_task_state(sd)
    report = mvit.load_pretrained(task.encoder, encoder, allow_new_head=True, allow_pretraining_keys=True, name=init)
    target = task.heads.state_dict()
    bad = [f"heads.{k} {tuple(v.shape)} vs task {tuple(target[k].shape)}"
           for k, v in heads.items() if k in target and v.shape != target[k].shape]
    if bad:
        raise CheckpointError(f"{init}: prediction head does not fit the task: {', '.join(bad)}")
    fits = {k: v for k, v in heads.items() if k in target}
    task.heads.load_state_dict(fits, strict=False)
    report.converted += len(fits)
    report.dropped += left_out + [f"heads.{k}" for k in heads if k not in target]  # e.g. a pixel head
    report.missing += [f"heads.{k}" for k in target if k not in fits]
    return report


def report_init(report: LoadReport | None, init: str | None, output_dir: str, accelerator) -> None:
    """Print the load report and save it as output_dir/init_report.json (main process)."""
    accelerator.print(f"init: {init}: {report.summary()}" if report else "init: none (training from scratch)")
    if report and accelerator.is_main_process:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "init_report.json").write_text(json.dumps({"init": init, **vars(report)}, indent=2))
