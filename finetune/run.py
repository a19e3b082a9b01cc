"""Finetune MViTv2 for video classification, then test with multiple views.

    accelerate launch finetune/run.py [--config FILE.yaml] [key=value ...]
    accelerate launch finetune/run.py --config configs/finetune/k400_mvitv2_s_16x4_maskfeat.yaml \\
        data.train='shards/k400/train-{000000..000239}.tar' data.val='shards/k400/val-{000000..000019}.tar'
    accelerate launch finetune/run.py eval_only=true init=runs/finetune-demo/export/model.safetensors
    accelerate launch finetune/run.py frozen_eval=true init=runs/pretrain-demo/export/encoder.safetensors

`init` is our pretraining export, our finetuned export, a 2D image checkpoint (timm /
facebookresearch MViTv2, inflated to 3D), a SlowFast `.pyth`, torchvision `mvit_v2_s`
weights, a checkpoint folder of this stage, or none (from scratch). With no arguments: the
demo, finetuning the pretraining demo's export on the demo's low-label split (4 videos per
class), then the same recipe from random init (`compare_scratch`, cached) and the frozen kNN /
linear probe of both encoders, ending with one table that compares them.
Recipes: configs/finetune/*.yaml (MaskFeat MViTv2-S / L on Kinetics-400, SSv2, ImageNet inflation).
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

if __package__ in (None, ""):  # `accelerate launch finetune/run.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mvit  # noqa: E402
from mvit.checkpoint import read_safetensors_metadata  # noqa: E402
from finetune import evaluate  # noqa: E402
from finetune.classify import Classification  # noqa: E402
from pretrain.init import no_init, report_init  # noqa: E402
from pretrain.runtime import (ModelConfig, OptimConfig, RunError, Schedule, TrainConfig, Trainer,  # noqa: E402
                              build_backbone, checkpoint_weights, describe, entry_point, find_shards,
                              full_state_dict, setup, start_run, unsharded)


@dataclass
class ClassifierConfig(ModelConfig):
    num_classes: int = field(default=0, metadata={"help": "0: the training shards' manifest"})


@dataclass
class DataConfig:
    train: str = field(default="", metadata={"help": "shard URL pattern; '' = the synthetic demo dataset"})
    val: str = ""
    demo_root: str = "data/demo"
    frames: int = 8
    stride: int = 2
    crop: int = 64
    sampling: str = field(default="random", metadata={"help": "random clips, or segment (SSv2)"})
    scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333])
    flip: bool = field(default=False, metadata={"help": "random horizontal flip; off for the demo's (and SSv2's) "
                                                         "left/right classes, on in the Kinetics recipes"})
    rand_augment: Optional[str] = field(default=None, metadata={"help": "timm RandAugment, e.g. rand-m7-n2-mstd0.5-inc1"})
    erase_prob: float = 0.0
    repeats: int = field(default=2, metadata={"help": "clips per decoded video (repeated sampling)"})
    short_side: Optional[int] = None
    align_starts: bool = field(default=False, metadata={
        "help": "start training clips only on the reference-frame grid of ref_stride shards (false: any start)"})
    epoch_samples: int = 0
    num_workers: int = 2
    test_clips: int = 3
    test_crops: int = 1
    test_sampling: str = field(default="uniform", metadata={"help": "uniform clips, or segment (SSv2)"})


@dataclass
class MixConfig:  # the demo trains without mixing; the recipes set the reference 0.8 / 1.0
    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1


# task=mae: the finetune demo for the MAE demo's export (`pretrain/run.py task=mae`), under any --config
# file and key=value: its ViT and its 96 px clips, the same labels and recipe as the MaskFeat demo
MAE_DEMO = {
    "model": {"name": "vit_demo_8x2"},
    "data": {"crop": 96},
    "init": "runs/pretrain-demo-mae/export/encoder.safetensors",
    "train": {"output_dir": "runs/finetune-demo-mae"},
}


@dataclass
class FinetuneConfig:
    PRESET_KEY: ClassVar[str] = "task"
    PRESETS: ClassVar[dict] = {"mae": MAE_DEMO}

    task: str = field(default="maskfeat", metadata={
        "help": "which pretraining demo the defaults finetune: maskfeat (its MViT export) or mae (the ViT export "
                "of `pretrain/run.py task=mae`: MAE_DEMO sets model, clip size, init and output folder)"})
    init: Optional[str] = field(default="runs/pretrain-demo/export/encoder.safetensors",
                                metadata={"help": "weights to start from; empty or 'none': from scratch"})
    allow_mismatch: bool = field(default=False, metadata={"help": "load what fits, report the rest, go on"})
    eval_only: bool = False
    frozen_eval: bool = field(default=False, metadata={"help": "kNN + linear probe on the init's features, no training"})
    compare_scratch: Optional[bool] = field(default=None, metadata={
        "help": "after finetuning from init, finetune the same recipe from random init (in output_dir/scratch, "
                "reused while its config matches), run the frozen kNN / linear probe on both encoders and print "
                "the comparison; null: on for the demo dataset only"})
    val_every: int = field(default=100, metadata={"help": "single-view validation every N steps; 0: never"})
    ema_decay: Optional[float] = None
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    # the demo's recipe: 3e-4 at 8 clips per step (4e-3 per 32 clips, the old default, collapses a from-scratch
    # model to the mean prediction as in pretraining)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.2e-3, base_batch=32, layer_decay=0.75,
                                                                   clip_grad=5.0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/finetune-demo", steps=300, warmup_steps=30, save_every=100, image_every=0))


# ----------------------------------------------------------------------------- building


def check_export_model(path: Path, cfg: FinetuneConfig) -> None:
    """One of our exports names the model it was saved from: another model.name is a one-line error
    that says which settings fit it (allow_mismatch=true: go on and load what fits)."""
    if path.suffix != ".safetensors" or cfg.allow_mismatch:
        return
    meta = read_safetensors_metadata(path)
    name = meta.get("model_name")
    if name is None or name == cfg.model.name:
        return
    size = json.loads(meta["mvit_config"]).get("input_size") if "mvit_config" in meta else None
    crop = f" data.crop={size[-1]}" if size and size[-1] != cfg.data.crop else ""
    stage = f" ({meta['stage']})" if "stage" in meta else ""
    demo = " (the MAE demo: task=mae)" if name == MAE_DEMO["model"]["name"] else ""
    raise RunError(f"init {path} is an export of {name}{stage}, but this run builds {cfg.model.name}: "
                   f"set model.name={name}{crop}{demo}")


def load_init(model, cfg: FinetuneConfig, accelerator) -> None:
    """Load cfg.init into the model; prints the report. Finetuning expects a new head and
    leftover pretraining keys; evaluation demands the complete classifier."""
    if no_init(cfg.init):
        report_init(None, cfg.init, cfg.train.output_dir, accelerator)
        return
    path = Path(cfg.init)
    if path.is_dir():  # a checkpoint folder of this stage: the task's state, model under "model."
        from safetensors.torch import load_file
        state = load_file(str(checkpoint_weights(path)))
        source = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    elif not path.exists():
        hint = " (run `accelerate launch pretrain/run.py` first)" if "pretrain-demo" in cfg.init else ""
        raise RunError(f"init: no such file {cfg.init}{hint}")
    else:
        source = str(path)
        check_export_model(path, cfg)
    training = not (cfg.eval_only or cfg.frozen_eval)
    report = mvit.load_pretrained(model, source, allow_new_head=training or cfg.frozen_eval,
                                  allow_pretraining_keys=True, strict=not cfg.allow_mismatch, name=cfg.init)
    report_init(report, cfg.init, cfg.train.output_dir, accelerator)


def eval_loader(cfg: FinetuneConfig, urls: str, accelerator, *, clips: int, crops: int):
    from videodata import build_eval_loader
    d = cfg.data
    return build_eval_loader(urls, frames=d.frames, stride=d.stride, crop=d.crop, num_clips=clips, num_crops=crops,
                             sampling=d.test_sampling, batch_size=cfg.train.batch_size, num_workers=d.num_workers,
                             rank=accelerator.process_index, world_size=accelerator.num_processes,
                             short_side=d.short_side)


def require_labels(batch: dict) -> None:
    """Trainer's check_batch: every training clip needs a class (unlabeled shards say -1)."""
    if (batch["label"] < 0).any():
        raise RunError("finetuning needs labelled shards (found label -1: unlabeled videos)")


# ----------------------------------------------------------------------------- evaluation


def gather(part, accelerator) -> list:
    """Every rank's `part` (any picklable), in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [part]
    from accelerate.utils import gather_object
    return gather_object([part])


@torch.no_grad()
def predict(model, loader, accelerator):
    """Per-view logits of this rank's share, gathered from all ranks -> ViewAggregate."""
    model.eval()
    logits, ids, views, labels = [], [], [], []
    for batch in loader:
        with accelerator.autocast():
            logits.append(model(batch["video"].to(accelerator.device)).float().cpu())
        ids += list(batch["video_id"])
        views.append(batch["view"])
        labels.append(batch["label"])
    if not logits:
        raise RunError("the evaluation loader produced no clips (empty or unreadable val shards?)")
    parts = gather((torch.cat(logits), ids, torch.cat(views), torch.cat(labels)), accelerator)
    return evaluate.aggregate_views(torch.cat([p[0] for p in parts]), [i for p in parts for i in p[1]],
                                    torch.cat([p[3] for p in parts]), views=torch.cat([p[2] for p in parts]))


def test_and_report(model, cfg, urls, classes, accelerator, *, prefix="test", step=0) -> dict:
    """Multi-view test: softmax averaged per video; metrics, CSVs and a confusion image."""
    clips, crops = cfg.data.test_clips, cfg.data.test_crops
    agg = predict(model, eval_loader(cfg, urls, accelerator, clips=clips, crops=crops), accelerator)
    num_classes = agg.probs.shape[1]
    names = classes if len(classes) == num_classes else [str(i) for i in range(num_classes)]
    metrics = evaluate.topk_accuracy(agg.probs, agg.labels)
    preds = agg.preds
    per_class = evaluate.per_class_accuracy(preds, agg.labels, num_classes)
    metrics.update(videos=len(agg.ids), views=f"{clips}x{crops}",
                   mean_class_acc=float(per_class[~per_class.isnan()].mean()))
    if accelerator.is_main_process:
        out = Path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        evaluate.write_predictions_csv(out / f"{prefix}_predictions.csv", agg, names)
        counts = torch.bincount(agg.labels, minlength=num_classes)
        evaluate.write_per_class_csv(out / f"{prefix}_per_class.csv", per_class, counts, names)
        (out / f"{prefix}_metrics.json").write_text(json.dumps(metrics, indent=2))
        cm = evaluate.confusion_matrix(preds, agg.labels, num_classes)
        accelerator.get_tracker("tensorboard", unwrap=True).add_image(
            f"{prefix}/confusion", evaluate.confusion_image(cm), step)
        accelerator.log({f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=step)
    return metrics


def frozen_eval(model, cfg, train_urls, val_urls, accelerator, out: Path | None = None) -> dict:
    """kNN and linear probe on pooled encoder features (one central clip per video), from
    `evaluate.extract_video_features`, the extraction scripts/extract_features.py writes."""
    feats = {}
    for split, urls in (("train", train_urls), ("val", val_urls)):
        loader = eval_loader(cfg, urls, accelerator, clips=1, crops=1)
        extracted = evaluate.extract_video_features(model, loader, accelerator.device, pool="mean")
        parts = gather((extracted.features, extracted.labels), accelerator)
        feats[split] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    num_classes = int(max(feats["train"][1].max(), feats["val"][1].max())) + 1
    (xtr, ytr), (xva, yva) = feats["train"], feats["val"]
    knn = evaluate.knn_classify(xtr, ytr, xva, num_classes, k=min(20, len(ytr)))
    probe = evaluate.linear_probe(xtr, ytr, xva, num_classes, seed=cfg.train.seed)
    metrics = {"knn_top1": evaluate.topk_accuracy(knn, yva, ks=(1,))["top1"],
               "linear_probe_top1": evaluate.topk_accuracy(probe, yva, ks=(1,))["top1"],
               "train_videos": len(ytr), "val_videos": len(yva)}
    if accelerator.is_main_process:
        out = Path(out or cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "frozen_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def compare_with_scratch(cfg: FinetuneConfig, argv: list[str], metrics: dict, shards, num_classes: int,
                         accelerator) -> dict:
    """The demo's point in numbers: the same finetuning recipe from random init (a second run in
    output_dir/scratch, or its cached result), and the frozen kNN / linear probe on the init's
    encoder and on a random-init one. Prints one table; writes comparison.json."""
    from pretrain.config import parse_config, to_yaml
    out = Path(cfg.train.output_dir)
    scratch_dir = out / "scratch"
    overrides = ["init=none", f"train.output_dir={scratch_dir}", "compare_scratch=false", "train.resume=''"]
    expected = to_yaml(parse_config(FinetuneConfig, [*argv, *overrides]))
    cached = scratch_dir / "test_metrics.json"
    config = scratch_dir / "config.yaml"
    if not (cached.is_file() and config.is_file() and config.read_text() == expected):
        accelerator.print(f"baseline: the same finetuning from random init, in {scratch_dir}")
        global _nested
        _nested += 1
        try:
            status = main([*argv, *overrides])
        finally:
            _nested -= 1
        if status != 0:
            raise RunError("the random-init baseline run failed")
    scratch = json.loads(cached.read_text())

    frozen = {}
    for name in ("init", "random"):
        torch.manual_seed(cfg.train.seed)  # the random-init encoder is the one the baseline started from
        model = build_backbone(cfg, num_classes=num_classes)
        if name == "init":
            probe_cfg = copy.deepcopy(cfg)
            probe_cfg.frozen_eval, probe_cfg.train.output_dir = True, str(out / "frozen_init")
            load_init(model, probe_cfg, accelerator)
        frozen[name] = frozen_eval(model.to(accelerator.device), cfg, shards.train, shards.val, accelerator,
                                   out=out / f"frozen_{name}")
    rows = {f"from {cfg.init}": {**_pick(metrics), **_pick(frozen["init"])},
            "from random init": {**_pick(scratch), **_pick(frozen["random"])}}
    if accelerator.is_main_process:
        (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    width = max(len(k) for k in rows)
    lines = [f"{'':{width}}  test top-1  test top-5  kNN top-1  linear probe top-1"]
    for name, r in rows.items():
        lines.append(f"{name:{width}}  {r['top1']:9.1%}  {r['top5']:9.1%}  {r['knn_top1']:9.1%}  "
                     f"{r['linear_probe_top1']:18.1%}")
    accelerator.print("\n".join(lines))
    return rows


_nested = 0  # > 0 while compare_with_scratch runs the baseline inside this process


def finish(accelerator) -> None:
    """End the run's trackers; the process group only ends with the outermost run."""
    if _nested:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()


def _pick(m: dict) -> dict:
    return {k: m[k] for k in ("top1", "top5", "knn_top1", "linear_probe_top1") if k in m}


# ----------------------------------------------------------------------------- main


@entry_point
def main(argv: list[str] | None = None) -> int:
    cfg, accelerator = setup(FinetuneConfig, argv, "accelerate launch finetune/run.py", __doc__)
    shards = find_shards(cfg.data.train, cfg.data.val, cfg.data.demo_root, accelerator)
    train_urls, val_urls, classes = shards.train, shards.val, shards.classes
    num_classes = cfg.model.num_classes or len(classes)
    if num_classes <= 0:
        raise RunError("model.num_classes is needed (the training shards' manifest lists no classes)")
    model = build_backbone(cfg, num_classes=num_classes)
    load_init(model, cfg, accelerator)
    config_yaml = start_run(accelerator, cfg, "tb")
    out = Path(cfg.train.output_dir)

    if cfg.frozen_eval:
        metrics = frozen_eval(model.to(accelerator.device), cfg, train_urls, val_urls, accelerator)
        accelerator.print(f"frozen features of {cfg.init or 'a random-init encoder'}: {metrics}")
        finish(accelerator)
        return 0
    if cfg.eval_only:
        if not val_urls:
            raise RunError("eval_only needs data.val")
        metrics = test_and_report(model.to(accelerator.device), cfg, val_urls, classes, accelerator)
        accelerator.print(f"test ({cfg.data.test_clips}x{cfg.data.test_crops} views): {metrics}\n"
                          f"  predictions: {out / 'test_predictions.csv'}")
        finish(accelerator)
        return 0

    from videodata import build_train_loader
    d = cfg.data
    epoch_samples = d.epoch_samples or shards.total
    task = Classification(model, num_classes, mixup=cfg.mix.mixup, cutmix=cfg.mix.cutmix, mix_prob=cfg.mix.prob,
                          switch_prob=cfg.mix.switch_prob, label_smoothing=cfg.mix.label_smoothing,
                          ema_decay=cfg.ema_decay)
    sched = Schedule.derive(cfg.train, cfg.optim, epoch_samples, accelerator.num_processes)
    trainer = Trainer(task, cfg.train, cfg.optim, sched, accelerator, config_yaml, check_batch=require_labels)
    start = trainer.resume()
    accelerator.print(f"finetuning {cfg.model.name} on {train_urls} ({num_classes} classes): "
                      f"{describe(sched, accelerator)}")
    loader = build_train_loader(
        train_urls, frames=d.frames, stride=d.stride, crop=d.crop, batch_size=cfg.train.batch_size,
        num_workers=d.num_workers, seed=cfg.train.seed, epoch_samples=epoch_samples, scale=tuple(d.scale),
        ratio=tuple(d.ratio), flip=d.flip, short_side=d.short_side, rand_augment=d.rand_augment,
        erase_prob=d.erase_prob, repeats=d.repeats, sampling=d.sampling, rank=accelerator.process_index,
        world_size=accelerator.num_processes, start_epoch=start, pin_memory=accelerator.device.type == "cuda",
        align_starts=d.align_starts)
    unwrapped = accelerator.unwrap_model(trainer.task)

    def on_step(step):
        unwrapped.update_ema(step)
        if val_urls and cfg.val_every and step % cfg.val_every == 0:
            with unsharded(unwrapped):  # FSDP: the model inside the task runs on its own
                single = predict(unwrapped.eval_model(), eval_loader(cfg, val_urls, accelerator, clips=1, crops=1),
                                 accelerator)
            trainer.log({f"val/{k}": v for k, v in evaluate.topk_accuracy(single.probs, single.labels).items()})
            trainer.task.train()

    trainer.fit(loader, on_step=on_step)
    final = unwrapped.eval_model()
    prefix = next(name for name, m in unwrapped.named_modules() if m is final) + "."  # "model." or "ema.module."
    weights = {k[len(prefix):]: v for k, v in full_state_dict(unwrapped).items() if k.startswith(prefix)}
    if accelerator.is_main_process:
        (out / "export").mkdir(parents=True, exist_ok=True)
        mvit.save_safetensors(final, out / "export" / "model.safetensors",
                              {"model_name": cfg.model.name, "classes": json.dumps(classes)}, state_dict=weights)
    if trainer.state.step < sched.total_steps:
        accelerator.print(f"stopped at step {trainer.state.step} of {sched.total_steps} "
                          "(continue with train.resume=latest)")
    elif val_urls:
        with unsharded(unwrapped):
            metrics = test_and_report(final, cfg, val_urls, classes, accelerator, step=trainer.state.step)
        accelerator.print(f"test ({d.test_clips}x{d.test_crops} views): {metrics}\n"
                          f"  predictions: {out / 'test_predictions.csv'}\n  export: {out / 'export'}\n"
                          f"  TensorBoard: tensorboard --logdir {out}")
        compare = cfg.compare_scratch if cfg.compare_scratch is not None else not cfg.data.train
        if compare and not no_init(cfg.init):
            compare_with_scratch(cfg, list(sys.argv[1:] if argv is None else argv), metrics, shards, num_classes,
                                 accelerator)
    finish(accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
