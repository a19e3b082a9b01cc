"""Convert a reference / foreign MViTv2 or MViTv1 checkpoint into our safetensors format.

    python scripts/convert_checkpoint.py SRC DST --model NAME [--pretraining] [--num-classes N]
    python scripts/convert_checkpoint.py MViTv2_S_16x4_k400_f302660347.pyth s_16x4.safetensors --model mvitv2_s_16x4

SRC: SlowFast `.pyth` (supervised MViTv2 / MViTv1, MaskFeat, ImageNet image models), torchvision
`mvit_v2_s` / `mvit_v1_b` state dict, timm `mvitv2_*` state dict, facebookresearch/mvit image
checkpoint, or our safetensors. An image checkpoint with a video --model is inflated 2D -> 3D. DST gets the weights plus the model
config as metadata, so `mvit.model_from_safetensors(DST)` rebuilds the model.
"""
from __future__ import annotations

import argparse
import logging
import sys

import mvit
from mvit.checkpoint import CheckpointError
from pretrain.config import ScriptParser


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("src")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--model", required=True, choices=mvit.list_models(), metavar="NAME",
                   help="target architecture: " + ", ".join(mvit.list_models()))
    p.add_argument("--pretraining", action="store_true", help="MaskFeat pretraining form of --model")
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: the model's)")
    p.add_argument("--allow-new-head", action="store_true", help="head/final norm may be missing or resized")
    p.add_argument("--allow-pretraining-keys", action="store_true",
                   help="drop MaskFeat mask token / prediction head / HOG buffers")
    p.add_argument("--patch-inflation", default="center", choices=["center", "mean"])
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.dst.endswith(".safetensors"):
        p.error("dst must end with .safetensors")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = mvit.create_model(args.model, pretraining=args.pretraining, **overrides)
    try:
        report = mvit.load_pretrained(model, args.src, allow_new_head=args.allow_new_head,
                                      allow_pretraining_keys=args.allow_pretraining_keys,
                                      patch_inflation=args.patch_inflation)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mvit.save_safetensors(model, args.dst, {"model_name": args.model, "source": "converted"})
    print(f"wrote {args.dst}: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
