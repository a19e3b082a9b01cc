"""Loading foreign and own MViTv2 weights: detect the format, convert key names, fit shapes.

Formats (see shared key-name table in the project docs):
- "flat": our own safetensors and the reference layouts that use flat `blocks.i` names —
  SlowFast `.pyth` (supervised MViTv2, MaskFeat pretraining / finetuning; a dict with
  `model_state`) and facebookresearch/mvit image checkpoints (`head.projection`).
- "torchvision": `torchvision.models.video.mvit_v2_s` state dicts.
- "timm": timm `mvitv2_*` state dicts (`stages.s.blocks.j`).

Fitting: rel-pos tables of another length are resized by linear interpolation; an image
checkpoint meeting a video model is inflated 2D -> 3D (MViTv2 paper rule, see `inflate`);
everything else must match, unless a flag allows a new head or leftover pretraining keys.
External files are read with `torch.load(weights_only=True)`; ours with safetensors.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .model import resize_rel_pos

log = logging.getLogger(__name__)

# keys that only a MaskFeat pretraining checkpoint has (reference `MaskMViT` and ours)
PRETRAINING_KEYS = re.compile(r"^(mask_token|pred_head\.|hogs\.)")
HEAD_KEYS = re.compile(r"^(head\.|norm\.)")


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
    if "conv_proj.weight" in sd or "pos_encoding.class_token" in sd:
        return "torchvision"
    if any(k.startswith("stages.") for k in sd):
        return "timm"
    if "patch_embed.proj.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "flat"
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {_short(sorted(sd), 3)})")


def _from_torchvision(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("conv_proj.", "patch_embed.proj.")
        if k == "pos_encoding.class_token":
            k, v = "cls_token", v.reshape(1, 1, -1)
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
    return {k.replace("head.projection.", "head."): v for k, v in sd.items()}


CONVERTERS = {"torchvision": _from_torchvision, "timm": _from_timm, "flat": _from_flat}


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
) -> LoadReport:
    """Load a checkpoint (path or state dict) of any supported format into `model`.

    allow_new_head: head / final norm may be missing or of another shape (they keep their init).
    allow_pretraining_keys: mask token, MaskFeat prediction head and HOG buffers are dropped.
    patch_inflation / pool_inflation: how 2D kernels become 3D (see `inflate`). The default
    "center" for the patch embed keeps a static clip's output equal to the image model's even
    at the first temporal token, whose window reaches into the zero padding; "mean" is the
    paper's rule and gives that token 2/3 of the response.
    strict=False turns every mismatch into a report entry instead of an error.
    Returns a LoadReport (also logged); raises CheckpointError with one line on a misfit.
    """
    where = os.fspath(checkpoint) if not isinstance(checkpoint, dict) else "state dict"
    sd = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else unwrap_state_dict(checkpoint)
    sd, fmt = convert_state_dict(sd, source_format)
    report = LoadReport(fmt)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []

    for k, v in sd.items():
        if k not in target:
            if allow_pretraining_keys and PRETRAINING_KEYS.match(k):
                report.dropped.append(k)
            else:
                report.unexpected.append(k)
            continue
        want = target[k].shape
        if v.shape == want:
            out[k] = v
            report.converted += 1
        elif "rel_pos" in k and v.dim() == 2 and v.shape[1] == want[1]:
            out[k] = resize_rel_pos(v.float(), want[0]).to(v.dtype)
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
    fresh_ok = re.compile(r"^(head\.|norm\.)") if allow_new_head else None
    bad_missing = [k for k in report.missing
                   if not (fresh_ok and fresh_ok.match(k))
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
