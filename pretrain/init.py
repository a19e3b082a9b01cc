"""Starting weights for a run (`init=`), and the load report both stages print and save.

Pretraining (MaskFeat or MAE) can start from (`load_pretraining_init`):
- our encoder export (export/encoder.safetensors) or a checkpoint folder of a pretraining run
  (checkpoints/step_*: encoder and prediction heads);
- a reference SlowFast MaskFeat or MAE `.pyth` (`slowfast/models/masked.py` MaskMViT): the encoder,
  the mask token, and the prediction head, whose LayerNorm + Linear are the shapes of our heads (MAE:
  its transformer blocks, decoder_embed and decoder_pos_embed are our decoder's);
- a mae_st pretraining `.pth` (encoder, decoder and pixel head; `_split_mae_st`) or a VideoMAE one (its
  encoder; its decoder differs from ours and is left out);
- any other checkpoint `mvit.load_pretrained` reads: supervised video models (their head and final
  norm dropped), image models (inflated 2D -> 3D). The mask token and heads then start fresh.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

import mvit
from mvit.checkpoint import CheckpointError, LoadReport, read_state_dict

from .runtime import checkpoint_weights

# The reference MaskMViT's prediction head (head_helper.MSSeparateHead, one prediction depth): transforms.0 =
# Sequential([decoder blocks...,] LayerNorm), projections.0 = Linear; ours: heads.<target> = (LayerNorm,
# Linear) and, in MAE form, decoder.blocks.*. MAE's decoder_embed / decoder_pos_embed / mask_token (the
# decoder's) keep their names under decoder.
_TRANSFORM = re.compile(r"^pred_head\.transforms\.0\.(\d+)\.(.*)$")


def no_init(init: str | None) -> bool:
    return not init or init.lower() in ("none", "scratch")


def split_task_state(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """A pretraining state dict -> (encoder state, the task's other state in MaskedModeling names
    (`heads.*`, `decoder.*`), keys left out). Ours (a checkpoint folder: `encoder.*`, `heads.*`,
    `decoder.*`, the HOG layer's fixed filters `hog.*`) or SlowFast's MaskMViT, MaskFeat or MAE (encoder
    keys at the top, `pred_head.*`, `hogs.*` which load_pretrained drops, and for MAE `decoder_embed`,
    `decoder_pos_embed` and the decoder's `mask_token`)."""
    if "encoder_to_decoder.weight" in sd:  # VideoMAE: its decoder is not ours (below); the encoder is
        return sd, {}, []                  # converted by mvit.load_pretrained, which drops the rest
    if "decoder_pred.weight" in sd:
        return _split_mae_st(sd)
    if any(k.startswith("encoder.") for k in sd):
        encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        rest = {k: v for k, v in sd.items() if k.startswith(("heads.", "decoder."))}
        return encoder, rest, [k for k in sd if not k.startswith(("encoder.", "heads.", "decoder."))]
    mae = "decoder_embed.weight" in sd
    target = "hog" if any(k.startswith("hogs.") for k in sd) or not mae else "pixel"
    norm_index = max((int(m[1]) for k in sd if (m := _TRANSFORM.match(k))), default=0)  # the head's LayerNorm
    encoder, rest = {}, {}
    for k, v in sd.items():
        m = _TRANSFORM.match(k)
        if m and int(m[1]) == norm_index:
            rest[f"heads.{target}.0.{m[2]}"] = v
        elif m:
            rest[f"decoder.blocks.{m[1]}.{m[2]}"] = v
        elif k.startswith("pred_head.projections.0."):
            rest[f"heads.{target}.1.{k[len('pred_head.projections.0.'):]}"] = v
        elif mae and k.startswith(("decoder_embed.", "decoder_pos_embed", "dec_pos_embed", "mask_token")):
            rest[f"decoder.{k}"] = v
        else:
            encoder[k] = v
    return encoder, rest, []


def _split_mae_st(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """mae_st (facebookresearch/mae_st models_mae.py): the encoder at the top (separate attn.q / k / v, joined
    by mvit.load_pretrained); decoder_embed, mask_token, decoder_blocks.i (separate q / k / v: joined here),
    decoder_norm + decoder_pred (our heads.pixel), separate decoder position tables (loaded as they are
    into a decoder with sep_pos, else summed into its one table), decoder_cls_token (mae_st drops the
    encoder's class token after its norm and starts the decoder with a token of its own): into a decoder
    with cls_token (`decoder.cls_token=true`), else left out (ours then keeps the encoder's, as SlowFast
    does). mae_st's targets are frames linspace(0, 15, 8) (the last is 15); ours are frames ::2 (the last
    is 14, SlowFast's): a continued pretraining learns that one frame's shift."""
    encoder, rest, left = {}, {}, []
    sep = {}
    for k, v in sd.items():
        if k.startswith("decoder_blocks."):
            rest["decoder.blocks." + k[len("decoder_blocks."):]] = v
        elif k.startswith(("decoder_embed.", "mask_token", "decoder_cls_token")):
            rest[f"decoder.{k}"] = v
        elif k.startswith("decoder_norm."):
            rest["heads.pixel.0." + k[len("decoder_norm."):]] = v
        elif k.startswith("decoder_pred."):
            rest["heads.pixel.1." + k[len("decoder_pred."):]] = v
        elif k.startswith("decoder_pos_embed"):
            sep[k] = v
        elif k.startswith("decoder_"):
            left.append(k)
        else:
            encoder[k] = v
    for key in [k for k in rest if re.search(r"\.attn\.q\.(weight|bias)$", k)]:
        attn, kind = key.rsplit(".q.", 1)
        rest[f"{attn}.qkv.{kind}"] = torch.cat([rest.pop(f"{attn}.{x}.{kind}") for x in "qkv"])
    for k, v in sep.items():  # decoder_pos_embed, or decoder_pos_embed_{spatial,temporal,class} -> SlowFast's names
        rest["decoder." + k.replace("decoder_pos_embed_", "dec_pos_embed_")] = v
    return encoder, rest, left


def _fit_decoder_pos(rest: dict, target: dict) -> dict:
    """Separate decoder tables (SlowFast DECODER_SEP_POS_EMBED, mae_st) into a task with one table: summed
    (exact: the decoder only adds them)."""
    sp, tp, cp = (f"decoder.dec_pos_embed_{x}" for x in ("spatial", "temporal", "class"))
    if sp in rest and tp in rest and "decoder.decoder_pos_embed" in target and sp not in target:
        table = (rest.pop(tp)[:, :, None] + rest.pop(sp)[:, None]).flatten(1, 2)  # (1, t·hw, D), (t, h, w) order
        if cp in rest:
            table = torch.cat([rest.pop(cp), table], 1)
        rest["decoder.decoder_pos_embed"] = table
    return rest


def load_pretraining_init(task, init: str | None) -> LoadReport | None:
    """Load `init` (see the module docstring) into a masked-modeling task: the encoder through
    mvit.load_pretrained (strict: a misfit is one CheckpointError line), then the prediction heads and
    decoder parts the source has. Returns the report (task parts the source lacks are missing: fresh);
    None for no init."""
    if no_init(init):
        return None
    path = Path(init)
    if path.is_dir():
        path = checkpoint_weights(path)
    sd = read_state_dict(path)
    encoder, rest, left_out = split_task_state(sd)
    report = mvit.load_pretrained(task.encoder, encoder, allow_new_head=True, allow_pretraining_keys=True, name=init)
    target = {k: v for k, v in task.state_dict().items() if k.startswith(("heads.", "decoder."))}
    rest = _fit_decoder_pos(rest, target)
    bad = [f"{k} {tuple(v.shape)} vs task {tuple(target[k].shape)}"
           for k, v in rest.items() if k in target and v.shape != target[k].shape]
    if bad:
        what = "decoder" if all(b.startswith("decoder.") for b in bad) else "prediction head"
        raise CheckpointError(f"{init}: {what} does not fit the task: {', '.join(bad)}")
    fits = {k: v for k, v in rest.items() if k in target}
    task.load_state_dict(fits, strict=False)
    report.converted += len(fits)
    report.dropped += left_out + [k for k in rest if k not in target]  # e.g. a pixel head, a decoder
    report.missing += [k for k in target if k not in fits]
    return report


def report_init(report: LoadReport | None, init: str | None, output_dir: str, accelerator) -> None:
    """Print the load report and save it as output_dir/init_report.json (main process)."""
    accelerator.print(f"init: {init}: {report.summary()}" if report else "init: none (training from scratch)")
    if report and accelerator.is_main_process:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "init_report.json").write_text(json.dumps({"init": init, **vars(report)}, indent=2))
