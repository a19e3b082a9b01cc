"""Loading foreign and own MViTv2 / MViTv1 weights: detect the format, convert key names, fit shapes.

Formats (see shared key-name table in the project docs):
- "flat": our own safetensors and the reference layouts that use flat `blocks.i` names —
  SlowFast `.pyth` (supervised MViTv2 and MViTv1, with one qkv or three q / k / v Linears;
  MaskFeat pretraining / finetuning; a dict with `model_state`) and facebookresearch/mvit
  image checkpoints (`head.projection`).
- "slowfast-image": SlowFast ImageNet `.pyth` (`configs/ImageNet/MVIT*.yaml`, PATCH_2D): flat
  names and a 2-D patch embed, but 3-D pooling kernels of one frame (kernel (1, 3, 3)).
- "torchvision": `torchvision.models.video.mvit_v2_s` / `mvit_v1_b` state dicts.
- "timm": timm `mvitv2_*` state dicts (`stages.s.blocks.j`).

Fitting: rel-pos tables of another length are resized by linear interpolation, absolute
position embeddings of another grid by `resize_pos_embed`; an image checkpoint meeting a video
model is inflated 2D -> 3D (MViTv2 paper rule, see `inflate`); everything else must match,
unless a flag allows a new head or leftover pretraining keys. An MViTv1 checkpoint (position
embeddings) meeting an MViTv2 model (rel-pos tables), or the reverse, is one error naming that.
External files are read with `torch.load(weights_only=True)`; ours with safetensors.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .model import resize_pos_embed, resize_rel_pos

log = logging.getLogger(__name__)

# keys that only a pretraining checkpoint has (MaskFeat or MAE: reference `MaskMViT`, mae_st, VideoMAE, ours)
PRETRAINING_KEYS = re.compile(r"^(mask_token|pred_head\.|hogs\.|decoder[._]|dec_pos_embed|encoder_to_decoder\.|"
                              r"videomae_encoder_norm\.)")
HEAD_KEYS = re.compile(r"^(head\.|norm\.)")
POOL_KERNEL = re.compile(r"\.attn\.pool_[qkv]\.weight$")
SEPARATE_Q = re.compile(r"^(blocks\.\d+\.attn)\.q\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


@dataclass
class LoadReport:
    source_format: str
    converted: int = 0  # tensors loaded as they are (after renaming)
    interpolated: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, deliberately not loaded
    missing: list[str] = field(default_factory=list)  # in the model, left at their init
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"format={self.source_format}", f"loaded={self.converted}"]
        for name in ("interpolated", "inflated", "dropped", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name}={len(keys)} ({_short(keys)})")
        return ", ".join(parts)


def _short(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", … +{len(keys) - n}" if len(keys) > n else "")


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors / .pyth / .pth / .pt file, or CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            # mae_st's and VideoMAE's save_model store the run's argparse.Namespace next to the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a checkpoint"
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {msg})") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model state inside the common wrappers and strip DDP / compile prefixes."""
    if isinstance(obj, dict):
        for key in ("model_state", "model", "state_dict", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where}: no model state dict found (expected tensors, or a dict "
                              "with 'model_state' / 'model' / 'state_dict')")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------- converting


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    if any(k.endswith(".attn.q_bias") for k in sd) or "encoder_to_decoder.weight" in sd:
        return "videomae"
    if "conv_proj.weight" in sd or "pos_encoding.class_token" in sd:
        return "torchvision"
    if any(k.startswith("stages.") for k in sd):
        return "timm"
    if sd.get("patch_embed.proj.weight", torch.empty(0)).dim() == 4 and any(
            POOL_KERNEL.search(k) and v.dim() == 5 for k, v in sd.items()):
        return "slowfast-image"
    if "patch_embed.proj.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "flat"
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {_short(sorted(sd), 3)})")


# torchvision keeps the class token and MViTv1's position tables without the batch dim
_TORCHVISION_POS = {"pos_encoding.class_token": "cls_token", "pos_encoding.class_pos": "pos_embed_class",
                    "pos_encoding.spatial_pos": "pos_embed_spatial", "pos_encoding.temporal_pos": "pos_embed_temporal"}


def _from_torchvision(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("conv_proj.", "patch_embed.proj.")
        if k in _TORCHVISION_POS:
            k, v = _TORCHVISION_POS[k], v.reshape(1, -1, v.shape[-1])  # (D,) / (N, D) -> (1, N, D)
        k = k.replace("attn.project.0.", "attn.proj.")
        k = re.sub(r"attn\.pool_([qkv])\.pool\.", r"attn.pool_\1.", k)
        k = re.sub(r"attn\.pool_([qkv])\.norm_act\.0\.", r"attn.norm_\1.", k)
        k = k.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
        k = re.sub(r"^(blocks\.\d+)\.project\.", r"\1.proj.", k)
        k = k.replace("head.1.", "head.")
        out[k] = v
    return out


def _from_timm(sd):
    # stage s, block j -> flat block index: count blocks per stage from the keys themselves
    depths: dict[int, int] = {}
    for k in sd:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            s, j = int(m[1]), int(m[2])
            depths[s] = max(depths.get(s, 0), j + 1)
    offsets = {s: sum(depths[i] for i in range(s)) for s in depths}
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.",
                   lambda m: f"blocks.{offsets[int(m[1])] + int(m[2])}.", k)
        k = re.sub(r"\.shortcut_proj_(attn|mlp)\.", ".proj.", k)
        k = k.replace("head.fc.", "head.")
        out[k] = v
    return out


def _from_flat(sd):
    out = {k.replace("head.projection.", "head."): v for k, v in sd.items()}
    # SlowFast's MViTv1 code of 2021 (and SEPARATE_QKV later) has three Linears attn.q / k / v, applied
    # before the pools as one qkv Linear is (POOL_FIRST off in every MViT config): stack their rows
    for key in [k for k in out if SEPARATE_Q.match(k)]:
        attn, kind = SEPARATE_Q.match(key).groups()
        if all(f"{attn}.{x}.{kind}" in out for x in "kv"):
            out[f"{attn}.qkv.{kind}"] = torch.cat([out.pop(f"{attn}.{x}.{kind}") for x in "qkv"])
    return out


def _from_slowfast_image(sd):
    # an image model's pools are Conv3d with a one-frame kernel (1, kh, kw) there: make them 2-D
    return {k: v[:, :, 0] if POOL_KERNEL.search(k) and v.dim() == 5 and v.shape[2] == 1 else v
            for k, v in _from_flat(sd).items()}


def _from_videomae(sd):
    """VideoMAE (MCG-NJU/VideoMAE modeling_{pretrain,finetune}.py): pretraining files hold `encoder.*`,
    `decoder.*`, `encoder_to_decoder`, `mask_token`; finetuned ones the encoder at the top with `fc_norm`
    (LayerNorm after mean pooling: our `norm` in fc_norm models) and `head`. Attention has a bias-free
    `qkv` plus `q_bias` / `v_bias`: the k bias is zero (a k bias shifts every logit of a query equally, so
    softmax ignores it; zero is exact). The encoder's own `norm` of a pretraining file is not used by
    VideoMAE's finetuning (its fc_norm starts fresh): named `videomae_encoder_norm.*` here, dropped by a
    finetune model and loaded as `norm` by an MAE encoder (`_place_videomae_encoder_norm`). The sinusoid
    table is not in the files."""
    pretraining = "encoder_to_decoder.weight" in sd
    out = {}
    for k, v in sd.items():
        if pretraining and not k.startswith("encoder."):
            out[k] = v  # decoder.*, encoder_to_decoder, mask_token: pretraining keys, dropped
            continue
        k = k[len("encoder."):] if pretraining else k
        if pretraining and k.startswith("norm."):
            k = "videomae_encoder_norm." + k[len("norm."):]
        k = k.replace("fc_norm.", "norm.")
        out[k] = v
    for key in [k for k in out if re.match(r"^blocks\.\d+\.attn\.q_bias$", k)]:
        attn = key[:-len(".q_bias")]
        q, v = out.pop(key), out.pop(f"{attn}.v_bias")
        out[f"{attn}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out


CONVERTERS = {"torchvision": _from_torchvision, "timm": _from_timm, "flat": _from_flat,
              "slowfast-image": _from_slowfast_image, "videomae": _from_videomae}


def convert_state_dict(sd: dict[str, torch.Tensor], source_format: str | None = None):
    """Rename a foreign state dict to our key names. Returns (state dict, format)."""
    fmt = source_format or detect_format(sd)
    return CONVERTERS[fmt](sd), fmt


# ----------------------------------------------------------------------------- fitting


def inflate(weight_2d: torch.Tensor, target_shape: torch.Size, mode: str) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, kt, kh, kw).

    "mean": repeat along time and divide by kt (MViTv2 / I3D rule): a clip of identical
    frames gives the 2D response wherever the temporal window holds only real frames.
    "center": the 2D kernel at the centre time slice, zeros elsewhere: each frame is filtered
    on its own, so the response stays exact next to temporal zero padding too.
    """
    kt = target_shape[2]
    if mode == "mean":
        return weight_2d.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
    if mode == "center":
        out = weight_2d.new_zeros(target_shape)
        out[:, :, kt // 2] = weight_2d
        return out
    raise ValueError(f"inflation mode must be 'mean' or 'center', not {mode!r}")


def fit_pos_embed(name: str, table: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    """A checkpoint's absolute position table (1, [prefix +] N, D) resized to the model's token grid
    (`resize_pos_embed`), or None when it cannot be. The source's spatial grid is taken to be
    square, as the reference's crops are (SlowFast asserts it)."""
    if table.dim() != 3 or not hasattr(model, "cfg"):
        return None
    grid = model.patch_grid(model.cfg.input_size)
    if name == "pos_embed_temporal":
        return resize_pos_embed(table, table.shape[1:2], grid[:1])
    if name not in ("pos_embed_spatial", "pos_embed") or (name == "pos_embed" and len(grid) != 2):
        return None  # (a joint (t, h, w) table of a video: its t is unknown)
    prefix = model.num_prefix_tokens if name == "pos_embed" else 0
    n = table.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    if side * side != n:
        return None
    return torch.cat([table[:, :prefix], resize_pos_embed(table[:, prefix:], (side, side), grid[-2:])], 1)


GENERATIONS = {"v1": "MViTv1 (absolute position embeddings, no rel-pos tables)",
               "v2": "MViTv2 (rel-pos tables, no absolute position embeddings)"}


def generation(keys) -> str | None:
    """The MViT generation a set of keys belongs to: v1 has position embeddings and no rel-pos
    tables, v2 the reverse; None for both or neither."""
    abs_pos = any(k.startswith("pos_embed") for k in keys)
    rel_pos = any(".rel_pos_" in k for k in keys)
    return "v1" if abs_pos and not rel_pos else "v2" if rel_pos and not abs_pos else None


def _place_videomae_encoder_norm(sd: dict, model: nn.Module) -> dict:
    """A VideoMAE pretraining encoder's `norm` runs on every token after the blocks, which is where a model
    without fc_norm has its final norm (our MAE encoder form, pretraining="mae"): it loads there. A model
    with fc_norm (the finetune form) keeps it dropped: that norm is VideoMAE's fc_norm, which its finetuning
    starts fresh (run_class_finetuning.py loads the encoder non-strict into a model whose `norm` is Identity)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.fc_norm or not cfg.final_norm:
        return sd
    return {("norm." + k[len("videomae_encoder_norm."):] if k.startswith("videomae_encoder_norm.") else k): v
            for k, v in sd.items()}


def _check_vit_variant(sd: dict, fmt: str, model: nn.Module, where: str) -> None:
    """VideoMAE's ViT (no class token, fixed sinusoid positions) and SlowFast / mae_st's (class token,
    learned separate position tables) are different models: say which one a checkpoint needs."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return
    if fmt == "videomae" and not cfg.sincos_pos:
        raise CheckpointError(f"{where} is a VideoMAE checkpoint (no class token, fixed sinusoid positions, "
                              "q/v biases): load it into a videomae_vit_* model")
    if cfg.sincos_pos and fmt != "videomae" and ("cls_token" in sd or "pos_embed_spatial" in sd):
        raise CheckpointError(f"{where} is a SlowFast / mae_st ViT checkpoint (class token, learned position "
                              "tables), not VideoMAE's: load it into a vit_* model")


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | dict,
    *,
    source_format: str | None = None,
    allow_new_head: bool = False,
    allow_pretraining_keys: bool = False,
    patch_inflation: str = "center",
    pool_inflation: str = "center",
    strict: bool = True,
    name: str | None = None,
) -> LoadReport:
    """Load a checkpoint (path or state dict) of any supported format into `model`.

    allow_new_head: head / final norm may be missing, of another shape (they keep their init) or
    absent from the model (dropped).
    allow_pretraining_keys: mask token, MaskFeat prediction head and HOG buffers are dropped; a
    model's mask token missing from the checkpoint keeps its init.
    patch_inflation / pool_inflation: how 2D kernels become 3D (see `inflate`). The default
    "center" for the patch embed keeps a static clip's output equal to the image model's even
    at the first temporal token, whose window reaches into the zero padding; "mean" is the
    paper's rule and gives that token 2/3 of the response.
    strict=False turns every mismatch into a report entry instead of an error.
    name: what messages call the checkpoint (default: its path, or "state dict").
    Returns a LoadReport (also logged); raises CheckpointError with one line on a misfit.
    """
    where = name or (os.fspath(checkpoint) if not isinstance(checkpoint, dict) else "state dict")
    sd = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else unwrap_state_dict(checkpoint)
    sd, fmt = convert_state_dict(sd, source_format)
    report = LoadReport(fmt)
    target = model.state_dict()
    _check_vit_variant(sd, fmt, model, where)
    if fmt == "videomae":
        sd = _place_videomae_encoder_norm(sd, model)
    src_gen, model_gen = generation(sd), generation(target)
    if strict and src_gen and model_gen and src_gen != model_gen:
        raise CheckpointError(f"{where} ({fmt}) is an {GENERATIONS[src_gen]} checkpoint, but the model is "
                              f"{GENERATIONS[model_gen]}: load it into an mvit{src_gen}_* model")
    out: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []

    for k, v in sd.items():
        if k not in target:
            if (allow_pretraining_keys and PRETRAINING_KEYS.match(k)) or (allow_new_head and HEAD_KEYS.match(k)):
                report.dropped.append(k)
            else:
                report.unexpected.append(k)
            continue
        want = target[k].shape
        fitted = fit_pos_embed(k, v.float(), model) if k.startswith("pos_embed") and v.shape != want else None
        if v.shape == want:
            out[k] = v
            report.converted += 1
        elif "rel_pos" in k and v.dim() == 2 and v.shape[1] == want[1]:
            out[k] = resize_rel_pos(v.float(), want[0]).to(v.dtype)
            report.interpolated.append(k)
        elif fitted is not None and fitted.shape == want:
            out[k] = fitted.to(v.dtype)
            report.interpolated.append(k)
        elif v.dim() == 4 and len(want) == 5 and v.shape[:2] == want[:2] and v.shape[2:] == want[3:]:
            mode = patch_inflation if k.startswith("patch_embed") else pool_inflation
            out[k] = inflate(v, want, mode)
            report.inflated.append(k)
        elif allow_new_head and HEAD_KEYS.match(k):
            report.dropped.append(k)
        else:
            mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(want)}")

    report.missing = [k for k in target if k not in out]
    if report.inflated:  # image -> video: the temporal tables start at zero (no temporal bias yet)
        for k in [k for k in report.missing if k.endswith("rel_pos_t")]:
            out[k] = torch.zeros_like(target[k])
            report.missing.remove(k)
            report.inflated.append(k)

    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_short(mismatched, 3)}")
    bad_missing = [k for k in report.missing
                   if not (allow_new_head and HEAD_KEYS.match(k))
                   and not (allow_pretraining_keys and PRETRAINING_KEYS.match(k))
                   and not (report.inflated and k == "cls_token")]  # image models without a class token
    if bad_missing:
        problems.append(f"{len(bad_missing)} missing key(s): {_short(bad_missing)}")
    if report.unexpected:
        hint = " (MaskFeat pretraining keys: pass allow_pretraining_keys=True)" if any(
            PRETRAINING_KEYS.match(k) for k in report.unexpected) else ""
        problems.append(f"{len(report.unexpected)} unexpected key(s): {_short(report.unexpected)}{hint}")
    if problems and strict:
        head_hint = "; a different head? pass allow_new_head=True" if any(
            HEAD_KEYS.match(m) for m in mismatched + bad_missing) else ""
        raise CheckpointError(f"{where} ({fmt}) does not fit {type(model).__name__}: "
                              + "; ".join(problems) + head_hint)
    report.unexpected += [m.split(" ")[0] for m in mismatched]

    model.load_state_dict(out, strict=False)
    log.info("loaded %s: %s", where, report.summary())
    return report


def save_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                     state_dict: dict[str, torch.Tensor] | None = None):
    """Our weight format: safetensors of the unwrapped model's state dict (no prefixes), with
    the architecture config as JSON metadata ("mvit_config") so the file rebuilds its model.
    state_dict: the weights to write instead of model.state_dict() (e.g. gathered from shards).
    Written to a temporary name and renamed, so a crash never leaves a half file."""
    from safetensors.torch import save_file

    from .registry import config_to_json
    meta = dict(metadata or {})
    if hasattr(model, "cfg"):
        meta.setdefault("mvit_config", config_to_json(model.cfg))
    sd = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state_dict is None
                                                         else state_dict).items()}
    tmp = f"{os.fspath(path)}.tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{os.fspath(path)}: not a readable safetensors file ({type(e).__name__})") from None


def model_from_safetensors(path: str | os.PathLike, **overrides):
    """Rebuild the model an export was saved from (config in its metadata) and load it.
    overrides: MViTConfig fields to change (e.g. num_classes), loaded with allow_new_head."""
    from dataclasses import replace

    from .model import MViT
    from .registry import config_from_json
    meta = read_safetensors_metadata(path)
    if "mvit_config" not in meta:
        raise CheckpointError(f"{os.fspath(path)}: no 'mvit_config' metadata (not an export of this project)")
    model = MViT(replace(config_from_json(meta["mvit_config"]), **overrides))
    load_pretrained(model, path, allow_new_head=bool(overrides))
    return model
