"""MaskFeat or MAE pretraining (one masked-modeling task, pretrain/maskfeat.py) on video shards.

    accelerate launch pretrain/run.py [--config FILE.yaml] [key=value ...]
    accelerate launch pretrain/run.py --config configs/pretrain/k400_mvitv2_s_16x4_maskfeat.yaml \\
        data.train='shards/k400/train-{000000..000239}.tar'

With no arguments: the demo. A synthetic dataset is made under data/demo (once), a
1.7M-parameter MViTv2 is pretrained on its 480 "unlabeled" videos on CPU for a few minutes,
and the run ends by printing where its checkpoints, encoder export and TensorBoard logs are.
`task=mae` runs MAE instead (a 1.4M-parameter ViT that sees the visible 25 % of its tokens,
a small decoder, per-patch normalized pixel targets; PRESETS below).
The dataclass defaults are the demo's recipe; configs/pretrain/*.yaml are the reference's.
Recipes: configs/pretrain/*.yaml (MaskFeat MViTv2-S / L 16x4, MAE ViT-B / L / H 16x4 on Kinetics-400).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

if __package__ in (None, ""):  # `accelerate launch pretrain/run.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mvit  # noqa: E402
from pretrain.init import load_pretraining_init, report_init  # noqa: E402
from pretrain.maskfeat import MaskedModeling  # noqa: E402
from pretrain.runtime import (ModelConfig, OptimConfig, RunError, Schedule, TrainConfig, Trainer,  # noqa: E402
                              build_backbone, checkpoint_weights, describe, entry_point, find_shards,
                              full_state_dict, setup, start_run)


@dataclass
class DataConfig:
    train: str = field(default="", metadata={"help": "shard URL pattern; '' = the synthetic demo dataset"})
    demo_root: str = "data/demo"
    frames: int = 8
    stride: int = 2
    crop: int = 64
    scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333])
    flip: bool = True
    short_side: Optional[int] = field(default=None, metadata={"help": "resize while decoding; null: as stored"})
    epoch_samples: int = field(default=0, metadata={"help": "clips per epoch; 0: the manifest's total"})
    num_workers: int = 2
    shuffle_buffer: int = 64
    repeats: int = 1
    normalize_on_device: bool = field(default=True, metadata={
        "help": "the loader hands over uint8 clips and the training device normalizes them (the same values, "
                "less loader CPU); false: normalized on the loader's cores"})
    align_starts: bool = field(default=False, metadata={
        "help": "start clips only on the reference-frame grid of ref_stride shards (cheaper decoding; "
                "false: any start, as the reference)"})


@dataclass
class MaskConfig:
    ratio: float = 0.4
    mode: str = field(default="cube", metadata={
        "help": "maskfeat: cube (reference), tube or random units; mae: random (SlowFast) or tube (VideoMAE) tokens"})
    # The reference's unit, 1x8x8 patch tokens, is 1/7 of a 224 frame's width. The demo's 64 px clips
    # take 1x4x4 (16 px, 4x4 units a frame), the finest unit that tiles their 4x4 output token grid.
    unit: List[int] = field(default_factory=lambda: [1, 4, 4], metadata={
        "help": "mask unit in patch tokens (t, h, w); the recipes use the reference's [1, 8, 8] (mae: one token)"})
    targets: List[str] = field(default_factory=lambda: ["hog"], metadata={"help": "hog and/or pixel"})
    visible_weight: float = field(default=1.0, metadata={
        "help": "weight of the loss on visible tokens (0: masked tokens only, the reference and the recipes)"})


@dataclass
class DecoderConfig:
    """MAE's decoder (task=mae): plain ViT blocks over all tokens (reference: 4 blocks of width 512, 8 heads)."""
    dim: int = 512
    depth: int = 4
    heads: int = 8
    sep_pos: bool = field(default=False, metadata={
        "help": "separate spatial / temporal / class position tables (SlowFast DECODER_SEP_POS_EMBED); "
                "false: one table (the reference recipes)"})
    pos_init: str = field(default="trunc_normal", metadata={
        "help": "how the position table starts: trunc_normal (std 0.02, the reference) or sincos (the grid's "
                "sin-cos table, learned from there; the demo)"})
    cls_token: bool = field(default=False, metadata={
        "help": "the decoder's own class token in place of the encoder's (mae_st's decoder_cls_token: set it to "
                "continue a mae_st pretraining exactly); false: the encoder's (SlowFast)"})


# task -> the masked-modeling task's encoder axis (pretrain/maskfeat.py): MaskFeat sends mask tokens through
# the encoder, MAE drops them and decodes
TASKS = {"maskfeat": "mask_token", "mae": "drop"}

# task=mae's demo recipe, under any --config file and key=value: a 1.4M-parameter ViT on the demo's
# 8x96² clips (4x6x6 tokens), a 2-block decoder of width 96, normalized pixels of the masked tokens only,
# AdamW betas (0.9, 0.95) (the reference's). Mask 0.75, not the recipes' 0.9: a demo clip has 144 tokens,
# and at 0.9 the 14 visible ones leave little to learn from. Encoder and decoder position tables start as
# sin-cos tables (the ViT's registered pos_init, decoder.pos_init): from the reference's 0.02 noise the
# decoder does not learn, in a CPU budget, to find a hidden patch's place in other frames (after 2000
# steps: 0.90x the loss of the clip's visible-patch mean; from sin-cos: 0.74x). lr 2e-3 at 8 clips, 2000 steps:
# docs/mae.md "Learning on the demo".
MAE_DEMO = {
    "model": {"name": "vit_demo_8x2"},
    "data": {"crop": 96},  # 4x6x6 = 144 tokens of 2x16x16 px (the MaskFeat demo's 64 px would leave 64)
    "mask": {"ratio": 0.75, "mode": "random", "targets": ["pixel"], "visible_weight": 0.0},
    "decoder": {"dim": 96, "depth": 2, "heads": 4, "pos_init": "sincos"},
    "optim": {"betas": [0.9, 0.95], "lr": 8e-3},
    "train": {"steps": 2000, "output_dir": "runs/pretrain-demo-mae"},
}


@dataclass
class PretrainConfig:
    PRESET_KEY: ClassVar[str] = "task"
    PRESETS: ClassVar[dict] = {"mae": MAE_DEMO}

    task: str = field(default="maskfeat", metadata={
        "help": "maskfeat (masked tokens become a mask token, all go through the encoder) or mae (the encoder "
                "sees the visible tokens, a decoder predicts the rest; its demo defaults: MAE_DEMO)"})
    init: Optional[str] = field(default=None, metadata={
        "help": "weights to start from (a resumed run loads its checkpoint over them): our encoder export, a "
                "pretraining checkpoint folder, a SlowFast MaskFeat .pyth (with its HOG head), a supervised or "
                "an image checkpoint (inflated); null / 'none': from scratch"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # The demo's recipe: 3e-4 at its 8 clips per step. At 4x that (the old default, 4e-3 per 32 clips)
    # the tiny MViT collapses to token-constant outputs, the mean predictor, and stays there.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.2e-3))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, warmup_steps=50, save_every=250,
                                                                   log_every=10, image_every=250))


def build_task(cfg: PretrainConfig) -> MaskedModeling:
    if cfg.task not in TASKS:
        raise RunError(f"task must be one of {sorted(TASKS)}, not {cfg.task!r}")
    size = (cfg.data.frames, cfg.data.crop, cfg.data.crop)
    try:
        encoder = build_backbone(cfg, pretraining="mae" if cfg.task == "mae" else "maskfeat")
        return MaskedModeling(encoder, size, encoder_mode=TASKS[cfg.task], mask_ratio=cfg.mask.ratio,
                              mask_mode=cfg.mask.mode, mask_unit=tuple(cfg.mask.unit), targets=tuple(cfg.mask.targets),
                              visible_weight=cfg.mask.visible_weight, decoder_dim=cfg.decoder.dim,
                              decoder_depth=cfg.decoder.depth, decoder_heads=cfg.decoder.heads,
                              decoder_sep_pos=cfg.decoder.sep_pos, decoder_cls_token=cfg.decoder.cls_token,
                              decoder_pos_init=cfg.decoder.pos_init)
    except ValueError as e:  # a model / mask / target setting that does not fit the task
        raise RunError(str(e)) from None


def build_loader(cfg: PretrainConfig, urls: str, accelerator, start_epoch: int, task: MaskedModeling):
    """The training loader; its workers make each batch's masks with the task's own masker,
    so the mask geometry (unit grid, ratio, mode) cannot differ between loader and model."""
    from videodata import build_train_loader
    d = cfg.data
    return build_train_loader(urls, frames=d.frames, stride=d.stride, crop=d.crop, batch_size=cfg.train.batch_size,
                              num_workers=d.num_workers, seed=cfg.train.seed, epoch_samples=d.epoch_samples or None,
                              scale=tuple(d.scale), ratio=tuple(d.ratio), flip=d.flip, short_side=d.short_side,
                              repeats=d.repeats, rank=accelerator.process_index,
                              world_size=accelerator.num_processes, start_epoch=start_epoch,
                              shuffle_buffer=d.shuffle_buffer, pin_memory=accelerator.device.type == "cuda",
                              mask_generator=task.masker, align_starts=d.align_starts,
                              normalize=not d.normalize_on_device)


def clips_normalizer(cfg: PretrainConfig):
    """Trainer's on_device hook: uint8 clips (data.normalize_on_device) -> normalized float."""
    if not cfg.data.normalize_on_device:
        return None
    from videodata import normalize_video
    return lambda batch: dict(batch, video=normalize_video(batch["video"]))


def export_encoder(task: MaskedModeling, cfg: PretrainConfig, step: int, accelerator) -> Path:
    """Encoder weights (safetensors, config in the metadata) + model_config.json for finetuning.
    Every rank calls it (sharded weights are gathered); the main process writes."""
    out = Path(cfg.train.output_dir) / "export"
    state = {k[len("encoder."):]: v for k, v in full_state_dict(task).items() if k.startswith("encoder.")}
    if not accelerator.is_main_process:
        return out / "encoder.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    encoder = task.encoder
    mvit.save_safetensors(encoder, out / "encoder.safetensors",
                          {"model_name": cfg.model.name, "stage": f"{cfg.task}-pretraining", "step": str(step)},
                          state_dict=state)
    (out / "model_config.json").write_text(json.dumps(
        {"model_name": cfg.model.name, "pretraining": True, "task": cfg.task, "step": step,
         "mvit_config": json.loads(mvit.config_to_json(encoder.cfg))}, indent=2))
    return out / "encoder.safetensors"


def load_task(output_dir: str | Path, step: int | None = None) -> tuple[MaskedModeling, PretrainConfig]:
    """The masked-modeling task (encoder and prediction heads) of a run folder, from its config and its
    last checkpoint (or step `step`), in eval mode: for pictures and checks of what it learned."""
    from safetensors.torch import load_file

    from pretrain.config import parse_config
    out = Path(output_dir)
    cfg = parse_config(PretrainConfig, ["--config", str(out / "config.yaml")])
    found = sorted((out / "checkpoints").glob("step_*" if step is None else f"step_{step:08d}"))
    if not found:
        raise RunError(f"no checkpoint in {out / 'checkpoints'}")
    task = build_task(cfg)
    task.load_state_dict(load_file(str(checkpoint_weights(found[-1]))))
    return task.eval(), cfg


@entry_point
def main(argv: list[str] | None = None) -> int:
    cfg, accelerator = setup(PretrainConfig, argv, "accelerate launch pretrain/run.py", __doc__)
    task = build_task(cfg)  # first: a setting or init that does not fit the model stops before any data work
    report_init(load_pretraining_init(task, cfg.init), cfg.init, cfg.train.output_dir, accelerator)
    shards = find_shards(cfg.data.train, "", cfg.data.demo_root, accelerator, demo_split="pretrain")
    urls = shards.train
    epoch_samples = cfg.data.epoch_samples or shards.total
    if not epoch_samples:
        raise RunError("data.epoch_samples is needed (no manifest next to the shards)")

    sched = Schedule.derive(cfg.train, cfg.optim, epoch_samples, accelerator.num_processes)
    trainer = Trainer(task, cfg.train, cfg.optim, sched, accelerator, start_run(accelerator, cfg, "tb"),
                      on_device=clips_normalizer(cfg))
    start = trainer.resume()
    accelerator.print(f"{cfg.task} pretraining {cfg.model.name} ({sum(p.numel() for p in task.encoder.parameters()):,} "
                      f"encoder params) on {urls}: {describe(sched, accelerator)}")
    # a resumed run draws fresh samples: the stream's seed moves with the start step
    trainer.fit(build_loader(cfg, urls, accelerator, start_epoch=start, task=task))

    export = export_encoder(accelerator.unwrap_model(trainer.task), cfg, trainer.state.step, accelerator)
    if accelerator.is_main_process:
        out = Path(cfg.train.output_dir)
        status = (f"done at step {trainer.state.step}" if trainer.state.step >= sched.total_steps else
                  f"stopped at step {trainer.state.step} of {sched.total_steps} (continue with train.resume=latest)")
        print(f"{status}\n  checkpoints: {out / 'checkpoints'}\n"
              f"  encoder export: {export}\n  TensorBoard: tensorboard --logdir {out}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
