"""Frozen MViTv2 features of every video in a set of shards (kNN, probes, retrieval, clustering).

    python scripts/extract_features.py --init runs/pretrain-demo/export/encoder.safetensors \\
        --data data/demo/shards/val-000000.tar --out features.safetensors
    python scripts/extract_features.py --init model.safetensors --data 'shards/k400/val-{000000..000019}.tar' \\
        --out val_3x1.safetensors --model mvitv2_s_16x4_maskfeat --frames 16 --stride 4 --crop 224 --clips 3

--init takes what finetune/run.py's init= takes: our pretraining or finetuning export, a
reference checkpoint (SlowFast .pyth, timm / facebookresearch / torchvision MViTv2), a
checkpoint folder of the finetune stage, or none (a random-init encoder, --seed). The model,
the loading and the clip sampling are the finetune stage's own (pretrain.runtime.build_backbone,
finetune.run.load_init as for frozen_eval, finetune.run.eval_loader), and the features come
from finetune.evaluate.extract_video_features, which frozen_eval's kNN / linear probe use too
(frozen_eval = --clips 1 --crops 1 --pool mean).

Output (safetensors; read it with finetune.evaluate.load_features), rows sorted by video id:
  features (N, D) float32       mean over the video's views of the pooled tokens
  view_features (N, V, D)       V = clips x crops, view = clip * crops + crop
  labels (N,) int64             -1: unlabeled
  tokens (N, V, t, h, w, D)     with --tokens (all in memory: N·V·t·h·w·D floats)
  metadata: video_ids (JSON, row order), init, model_name, views ("KxS"), pool, grid (JSON
  [t, h, w]), clip (JSON frames / stride / crop / sampling / short_side), init_report (JSON).
Errors are one line and exit code 2.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/extract_features.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402

import mvit  # noqa: E402
from finetune import evaluate  # noqa: E402
from finetune.run import FinetuneConfig, eval_loader, load_init  # noqa: E402
from mvit.checkpoint import read_safetensors_metadata  # noqa: E402
from pretrain.config import ScriptParser  # noqa: E402
from pretrain.runtime import RunError, build_backbone, entry_point  # noqa: E402
from videodata import expand_urls  # noqa: E402

DEFAULT_MODEL = "mvitv2_demo_8x2_maskfeat"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--init", required=True, help="weights (see above), or none")
    p.add_argument("--data", required=True, help="shards: a brace pattern (val-{000000..000009}.tar), a glob, "
                                                 "several joined by '::', or URLs")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--model", choices=mvit.list_models(), metavar="NAME",
                   help="architecture (default: the model_name the export records in its metadata or in a "
                        f"model_config.json beside it, else {DEFAULT_MODEL})")
    g = p.add_argument_group("clips (the finetune stage's test views)")
    g.add_argument("--frames", type=positive, default=8)
    g.add_argument("--stride", type=positive, default=2)
    g.add_argument("--crop", type=positive, default=64)
    g.add_argument("--clips", type=positive, default=1, help="temporal clips per video")
    g.add_argument("--crops", type=positive, default=1, help="spatial crops per clip")
    g.add_argument("--sampling", choices=["uniform", "segment"], default="uniform", help="segment: SSv2")
    g.add_argument("--short-side", type=positive, default=None,
                   help="resize while decoding (default: crop with several crops, else crop·256/224)")
    r = p.add_argument_group("run")
    r.add_argument("--pool", choices=["mean", "cls"], default="mean",
                   help="mean of the patch tokens (frozen_eval's), or the class token")
    r.add_argument("--tokens", action="store_true", help="also store the token grids")
    r.add_argument("--batch-size", type=positive, default=16)
    r.add_argument("--num-workers", type=int, default=2)
    r.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--seed", type=int, default=0, help="initial weights with --init none (frozen_eval's train.seed)")
    return p


def shard_urls(data: str) -> list[str]:
    """The shards of --data; a local pattern must match files (the loader would only warn)."""
    def local(url: str) -> bool:
        return "://" not in url and not url.startswith("pipe:")

    urls = []
    for url in expand_urls(data):
        urls += sorted(glob.glob(url)) if local(url) and glob.has_magic(url) else [url]
    missing = [u for u in urls if local(u) and not os.path.isfile(u)]
    if not urls or len(missing) == len(urls):
        raise RunError(f"--data {data}: no shard file matches")
    if missing:
        raise RunError(f"--data {data}: {len(missing)} of {len(urls)} shard files missing (first: {missing[0]})")
    return urls


def check_writable(folder: Path) -> None:
    """Fail before hours of extraction, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RunError(f"--out: cannot write to folder {folder} ({e.strerror or type(e).__name__})") from None


def recorded_model_name(init: str) -> str | None:
    """The model_name an export of ours records: its safetensors metadata, else the
    model_config.json that the pretraining export writes beside it."""
    path = Path(init)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    name = read_safetensors_metadata(path).get("model_name")
    config = path.parent / "model_config.json"
    if not name and config.is_file():
        try:
            name = json.loads(config.read_text()).get("model_name")
        except (OSError, ValueError, AttributeError) as e:
            raise RunError(f"{config}: not a readable model config ({type(e).__name__}); choose --model") from None
    if name and name not in mvit.list_models():
        raise RunError(f"{init} records model {name!r}, which is not registered; choose one with --model")
    return name


def stage_config(args, model_name: str, output_dir: str):
    """The finetune stage's config for these clips, so that model, loading and loader are
    exactly frozen_eval's (a typed OmegaConf object, as build_backbone expects)."""
    from omegaconf import OmegaConf
    return OmegaConf.merge(OmegaConf.structured(FinetuneConfig), {
        "init": args.init, "frozen_eval": True, "model": {"name": model_name},
        "data": {"frames": args.frames, "stride": args.stride, "crop": args.crop, "test_sampling": args.sampling,
                 "short_side": args.short_side, "num_workers": args.num_workers},
        "train": {"batch_size": args.batch_size, "output_dir": output_dir, "seed": args.seed}})


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # mvit.checkpoint logs the load report
    out = Path(args.out)
    check_writable(out.parent)
    urls = shard_urls(args.data)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device available")
    state = PartialState()  # what load_init / eval_loader need of an Accelerator: one process here
    if state.num_processes > 1:
        raise RunError("run this script as one process (python, not accelerate launch / torchrun)")
    recorded = recorded_model_name(args.init)
    model_name = args.model or recorded or DEFAULT_MODEL

    torch.manual_seed(args.seed)  # the random init of --init none, as frozen_eval's set_seed(train.seed)
    with tempfile.TemporaryDirectory() as report_dir:  # load_init writes init_report.json into its run folder
        cfg = stage_config(args, model_name, report_dir)
        model = build_backbone(cfg)
        try:
            load_init(model, cfg, state)
        except mvit.CheckpointError as e:
            origin = "--model" if args.model else "recorded in the export" if recorded else "the default"
            raise RunError(f"{e} (model {model_name}, {origin}; choose another with --model)") from None
        report = Path(report_dir) / "init_report.json"
        init_report = json.dumps(json.loads(report.read_text())) if report.is_file() else "null"  # one line
    if args.pool == "cls" and model.num_prefix_tokens < 1:
        raise RunError(f"--pool cls: {model_name} has no class token")

    device = torch.device(args.device)
    views = args.clips * args.crops
    loader = eval_loader(cfg, urls, state, clips=args.clips, crops=args.crops)
    feats = evaluate.extract_video_features(model.to(device), loader, device, pool=args.pool, num_views=views,
                                            keep_tokens=args.tokens)
    if not feats.ids:
        raise RunError(f"--data {args.data}: no video could be decoded (see the warnings above)")
    grid = list(model.feature_grid((args.frames, args.crop, args.crop)))
    clip = {"frames": args.frames, "stride": args.stride, "crop": args.crop, "sampling": args.sampling,
            "short_side": args.short_side}
    try:
        evaluate.save_features(out, feats, {
            "init": args.init, "model_name": model_name, "views": f"{args.clips}x{args.crops}", "pool": args.pool,
            "grid": json.dumps(grid), "clip": json.dumps(clip), "init_report": init_report})
    except OSError as e:
        raise RunError(f"--out: cannot write {out} ({e.strerror or type(e).__name__})") from None
    labeled = int((feats.labels >= 0).sum())
    print(f"wrote {out}: {len(feats.ids)} videos ({labeled} labelled) x {views} view{'s' if views > 1 else ''}, "
          f"features {tuple(feats.features.shape)}, grid {grid}" + (" with tokens" if args.tokens else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
