"""Masked modeling of video tokens: MaskFeat (Wei et al., 2022) and MAE (He et al., 2022; Feichtenhofer
et al., 2022), one task with two axes (reference `slowfast/models/masked.py`, MaskMViT):

- encoder: "mask_token" (MaskFeat): masked patch tokens become a learnable mask token and every token
  goes through the encoder (any MViT, pretraining form "maskfeat"); or "drop" (MAE): the encoder sees
  only the visible tokens (a plain ViT, pretraining form "mae"), and a small decoder fills in mask
  tokens, unshuffles and predicts every position;
- targets: "hog" (MaskFeat's HOG per output token) and / or "pixel" (per-patch normalized pixels).

MaskFeat = mask_token + hog; MAE (SlowFast `*_MAE_PT.yaml`, VideoMAE, mae_st) = drop + pixel; the other
two corners work as well (SlowFast runs MaskFeat on a ViT in `in1k_VIT_*_MaskFeat_PT.yaml`).

Batch -> loss in named steps:
    masks           the batch's "mask" (made by the loader's workers from `masker`, see
                    videodata/pipeline.py), or masks made here when it has none
    forward_encoder mask tokens through the encoder, or visible tokens through the encoder and the decoder
    targets         HOG per output token (one frame per temporal token), or normalized pixels
    forward_loss    per-target LayerNorm + Linear head, MSE over masked tokens (+ optionally the visible)
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mvit import MViT
from mvit.model import POS_INITS, MultiScaleBlock, sincos_grid_table, split_sincos_table

from .hog import HOGLayer, hog_targets, pixel_targets
from .masking import CubeMaskGenerator, TokenMaskGenerator, upsample_mask

TARGETS = ("hog", "pixel")
ENCODER_MODES = ("mask_token", "drop")


class MAEDecoder(nn.Module):
    """MAE's decoder (SlowFast `_mae_forward_decoder` + the blocks of `MSSeparateHead`): decoder_embed,
    mask tokens appended and unshuffled, the encoder's class token kept in front (or, with cls_token, the
    decoder's own: mae_st), one learned decoder_pos_embed, `depth` plain ViT blocks of width `dim` (heads =
    dim // 64 in the reference).
    The final LayerNorm and the Linear are the task's per-target heads."""

    def __init__(self, encoder: MViT, grid: tuple[int, int, int], dim: int = 512, depth: int = 4, heads: int = 8,
                 sep_pos: bool = False, cls_token: bool = False, pos_init: str = "trunc_normal"):
        """grid: the patch token grid (t, h, w). sep_pos: separate spatial / temporal / class tables
        (SlowFast DECODER_SEP_POS_EMBED, mae_st's default) instead of one (t·h·w + prefix) table: every
        frame then shares the spatial part, so a mask token finds the same place in other frames early.
        cls_token: the decoder starts with a class token of its own (`decoder_cls_token`, zeros at init)
        in place of the encoder's (mae_st models_mae.py, which drops the encoder's after its norm).
        pos_init: "trunc_normal" (std 0.02, the reference) or "sincos" (the tables start as the grid's
        sin-cos table, class rows 0; `mvit.model.sincos_grid_table`)."""
        super().__init__()
        self.prefix = encoder.num_prefix_tokens
        self.grid = tuple(grid)
        self.decoder_embed = nn.Linear(encoder.num_features, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_cls_token = None
        if cls_token:
            if not self.prefix:
                raise ValueError("decoder cls_token replaces the encoder's class token: the encoder has none")
            self.decoder_cls_token = nn.Parameter(torch.zeros(1, self.prefix, dim))
        t, h, w = grid
        if sep_pos:
            self.dec_pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, dim))
            self.dec_pos_embed_temporal = nn.Parameter(torch.zeros(1, t, dim))
            self.dec_pos_embed_class = nn.Parameter(torch.zeros(1, self.prefix, dim))
            self.decoder_pos_embed = None
        else:
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.prefix + t * h * w, dim))
        cfg = replace(encoder.cfg, depths=(depth,), embed_dim=dim, num_heads=heads, drop_path_rate=0.0)
        ones = (1,) * len(cfg.input_size)
        self.blocks = nn.ModuleList(MultiScaleBlock(cfg, dim, dim, heads, ones, ones, ones, 0.0)
                                    for _ in range(depth))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if "pos_embed" in name or name == "mask_token":
                nn.init.trunc_normal_(p, std=0.02)
        if pos_init not in POS_INITS:
            raise ValueError(f"decoder pos_init must be one of {POS_INITS}, not {pos_init!r}")
        if pos_init == "sincos":
            with torch.no_grad():
                if sep_pos:
                    temporal, spatial = split_sincos_table(self.grid, dim)
                    self.dec_pos_embed_temporal.copy_(temporal[None])
                    self.dec_pos_embed_spatial.copy_(spatial[None])
                    self.dec_pos_embed_class.zero_()
                else:
                    self.decoder_pos_embed.zero_()
                    self.decoder_pos_embed[0, self.prefix:] = sincos_grid_table(self.grid, dim)

    def pos_table(self) -> torch.Tensor:
        """(1, prefix + t·h·w, dim): the decoder's position embedding in (class, t, h, w) order."""
        if self.decoder_pos_embed is not None:
            return self.decoder_pos_embed
        grid = (self.dec_pos_embed_temporal[:, :, None] + self.dec_pos_embed_spatial[:, None]).flatten(1, 2)
        return torch.cat([self.dec_pos_embed_class, grid], 1)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D) encoder tokens, visible ones in shuffled order; restore (B, N) the
        position of each token in [visible..., masked...] -> (B, prefix + N, dim) in grid order."""
        B, N = restore.shape
        p = self.prefix
        x = self.decoder_embed(latent)  # (B, prefix + K, dim)
        front = x[:, :p]
        if self.decoder_cls_token is not None:  # mae_st: the decoder's own class token, not the encoder's
            front = self.decoder_cls_token.to(x.dtype).expand(B, -1, -1)  # (B, prefix, dim)
        fill = self.mask_token.to(x.dtype).expand(B, N - (x.shape[1] - p), -1)  # (B, N - K, dim)
        x_ = torch.cat([x[:, p:], fill], 1)  # (B, N, dim), shuffled order
        x_ = x_.gather(1, restore[..., None].expand(-1, -1, x_.shape[-1]))  # unshuffle -> grid order
        x = torch.cat([front, x_], 1) + self.pos_table()  # (B, prefix + N, dim)
        for blk in self.blocks:
            x, _ = blk(x, (N,))
        return x


class MaskedModeling(nn.Module):
    """encoder: an MViT in the pretraining form of `encoder_mode` ("mask_token": form "maskfeat",
    "drop": form "mae"); input_size: (T, H, W).

    mask_token mode: cube / tube / random masks of `mask_unit`-sized units (CubeMaskGenerator).
    drop mode: MAE masks of single tokens, "random" or "tube" (TokenMaskGenerator), and a decoder
    of `decoder_depth` blocks of width `decoder_dim`.
    """

    def __init__(self, encoder: MViT, input_size: tuple[int, int, int], *, encoder_mode: str = "mask_token",
                 mask_ratio: float = 0.4, mask_mode: str = "cube", mask_unit: tuple[int, int, int] = (1, 8, 8),
                 targets: tuple[str, ...] = ("hog",), hog_nbins: int = 9, hog_cell: int = 8,
                 visible_weight: float = 0.0, decoder_dim: int = 512, decoder_depth: int = 4,
                 decoder_heads: int = 8, decoder_sep_pos: bool = False, decoder_cls_token: bool = False,
                 decoder_pos_init: str = "trunc_normal"):
        super().__init__()
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder mode must be one of {ENCODER_MODES}, not {encoder_mode!r}")
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise ValueError(f"targets must be a non-empty subset of {TARGETS}, got {list(targets)}")
        self.encoder_mode = encoder_mode
        self.encoder = encoder
        self.input_size = tuple(input_size)
        self.patch_grid = encoder.patch_grid(self.input_size)  # e.g. 8×56×56
        self.decoder = None
        if encoder_mode == "drop":
            if not encoder.cfg.plain or encoder.mask_token is not None:
                raise ValueError("encoder mode 'drop' (MAE) needs a plain ViT in its MAE form "
                                 "(create_model('vit_...', pretraining='mae'))")
            encoder.check_input(self.input_size)
            self.token_grid = self.patch_grid  # the decoder predicts every patch token
            self.mask_grid = self.patch_grid
            self.masker = TokenMaskGenerator(self.patch_grid, mask_ratio, mask_mode)
            self.decoder = MAEDecoder(encoder, self.patch_grid, decoder_dim, decoder_depth, decoder_heads,
                                      decoder_sep_pos, decoder_cls_token, decoder_pos_init)
            D = decoder_dim
        else:
            if encoder.mask_token is None:
                raise ValueError("encoder mode 'mask_token' (MaskFeat) needs the encoder's MaskFeat pretraining form "
                                 "(create_model(..., pretraining=True))")
            self.token_grid = encoder.feature_grid(self.input_size)  # e.g. 8×14×14
            units = tuple(g // u for g, u in zip(self.patch_grid, mask_unit))
            if any(g % u for g, u in zip(self.patch_grid, mask_unit)) or any(
                    t % u for t, u in zip(self.token_grid, units)):
                raise ValueError(f"mask.unit {list(mask_unit)} does not tile the patch grid {list(self.patch_grid)} "
                                 f"and the output token grid {list(self.token_grid)} of {list(self.input_size)} clips")
            self.mask_grid = units  # e.g. 8×7×7
            per_frame = units[1] * units[2]
            # reference loader: block area in [units per frame // 5, units per frame]
            self.masker = CubeMaskGenerator(units, mask_ratio, min_area=max(1, per_frame // 5), max_area=per_frame,
                                            mode=mask_mode)
            D = encoder.num_features
        self.hog = HOGLayer(hog_nbins, hog_cell)
        self.temporal_stride = self.input_size[0] // self.token_grid[0]  # one frame per temporal token
        T, H, W = self.input_size
        t, h, w = self.token_grid
        dims = {"hog": 3 * hog_nbins * (H // hog_cell // h) * (W // hog_cell // w), "pixel": 3 * (H // h) * (W // w)}
        self.visible_weight = visible_weight
        # per target: LayerNorm + Linear (SlowFast MSSeparateHead: transforms.0's last LayerNorm, projections.0)
        self.heads = nn.ModuleDict({k: nn.Sequential(nn.LayerNorm(D, eps=1e-6), nn.Linear(D, dims[k]))
                                    for k in targets})
        for head in self.heads.values():
            nn.init.trunc_normal_(head[1].weight, std=0.02)
            nn.init.zeros_(head[1].bias)

    # ------------------------------------------------------------------ named steps

    def make_masks(self, batch_size: int, device) -> torch.Tensor:
        """-> bool (B, *mask_grid), True = masked (global torch RNG: saved with checkpoints)."""
        return self.masker(batch_size).to(device)

    def masks(self, batch: dict) -> torch.Tensor:
        """The batch's mask units (B, *mask_grid) bool: batch["mask"], which training loaders
        make in their workers with `self.masker` (no per-clip work here), else made now."""
        units = batch.get("mask")
        if units is None:
            return self.make_masks(batch["video"].shape[0], batch["video"].device)
        if tuple(units.shape[1:]) != self.mask_grid or units.dtype != torch.bool:
            raise ValueError(f"the batch's mask is {units.dtype} {list(units.shape[1:])} per clip but the task masks "
                             f"a {list(self.mask_grid)} unit grid: build the loader with mask_generator=task.masker")
        return units

    def forward_encoder(self, video: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W), units (B, *mask_grid) -> output tokens (B, t·h·w, D) over token_grid
        (encoder tokens, or the decoder's in drop mode), class token dropped."""
        if self.decoder is not None:
            return self.forward_decoder(*self.forward_visible(video, units))
        tokens = self.encoder(video, mask=upsample_mask(units, self.patch_grid), tokens=True)  # a call: compiled
        return tokens[:, self.encoder.num_prefix_tokens:]  # the class token predicts nothing

    def forward_visible(self, video: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop mode: video (B, 3, T, H, W), mask (B, t, h, w) -> encoder tokens of the visible patches
        (B, prefix + K, D) and restore (B, N), the unshuffling index for the decoder. The visible tokens
        go first in grid order, then the masked ones (the reference orders both by its noise; tokens
        without rel-pos do not see their order)."""
        flat = units.flatten(1)  # (B, N)
        K = self.masker.keep
        counts = (~flat).sum(1)
        if bool((counts != K).any()):
            raise ValueError(f"every clip's mask must leave {K} visible tokens (the task's masker), got "
                             f"{sorted(set(counts.tolist()))}")
        shuffle = torch.argsort(flat.to(torch.uint8), dim=1, stable=True)  # (B, N): visible, then masked
        restore = torch.argsort(shuffle, dim=1)
        latent = self.encoder(video, keep=shuffle[:, :K], tokens=True)  # (B, prefix + K, D)
        return latent, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """(B, prefix + K, D), (B, N) -> decoder tokens (B, N, decoder_dim), class token dropped."""
        return self.decoder(latent, restore)[:, self.decoder.prefix:]

    @torch.no_grad()
    def targets(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B, 3, T, H, W) as the model sees it -> {name: (B, t·h·w, C)} float32."""
        out = {}
        if "hog" in self.heads:
            out["hog"] = hog_targets(self.hog, video, temporal_stride=self.temporal_stride, grid=self.token_grid)
        if "pixel" in self.heads:
            _, H, W = self.input_size
            t, h, w = self.token_grid
            out["pixel"] = pixel_targets(video[:, :, ::self.temporal_stride], patch=(1, H // h, W // w),
                                         grid=self.token_grid)
        return out

    def forward_loss(self, tokens: torch.Tensor, targets: dict, units: torch.Tensor):
        """MSE over masked tokens and all target values, per target; the loss is their sum, plus
        visible_weight x the same MSE over the visible tokens (0, the reference: masked only).
        -> (loss, {target: masked-token MSE})."""
        masked = upsample_mask(units, self.token_grid).flatten(1)  # (B, t·h·w)
        losses, total = {}, 0.0
        for name, target in targets.items():
            if self.visible_weight:
                err = (self.heads[name](tokens).float() - target).pow(2).mean(-1)  # (B, t·h·w)
                losses[name] = err[masked].mean()
                total = total + losses[name] + self.visible_weight * err[~masked].mean()
            else:
                pred = self.heads[name](tokens[masked]).float()  # (M, C)
                losses[name] = F.mse_loss(pred, target[masked])
                total = total + losses[name]
        return total, losses

    @staticmethod
    @torch.no_grad()
    def trivial_losses(target: torch.Tensor, masked: torch.Tensor, with_zero: bool = False) -> dict[str, torch.Tensor]:
        """The losses of two predictors that need no learning, on the same masked tokens; a
        model that does not beat both has learned nothing about context.

        target (B, N, C), masked (B, N) bool ->
            mean:    every token predicted as the batch's mean target vector
            visible: every masked token predicted as the mean target of its clip's visible tokens
            zero:    (with_zero) every token predicted as 0
        """
        m = masked[..., None].float()
        mean = target.mean((0, 1))
        seen = (target * (1 - m)).sum(1, keepdim=True) / (1 - m).sum(1, keepdim=True).clamp(min=1)  # (B, 1, C)
        per_token = lambda err: (err.mean(-1) * masked).sum() / masked.sum().clamp(min=1)  # noqa: E731
        out = {"mean": per_token((target - mean) ** 2), "visible": per_token((target - seen) ** 2)}
        if with_zero:  # per-patch normalized pixels: 0 is the mean of every target vector
            out["zero"] = per_token(target ** 2)
        return out

    def forward(self, batch: dict):
        video = batch["video"]
        units = self.masks(batch)
        tokens = self.forward_encoder(video, units)
        targets = self.targets(video)
        loss, parts = self.forward_loss(tokens, targets, units)
        report = {f"loss_{k}": v.detach() for k, v in parts.items()}
        masked = upsample_mask(units, self.token_grid).flatten(1)
        for name, target in targets.items():  # what the loss must beat (train/trivial_*)
            for kind, value in self.trivial_losses(target, masked, with_zero=name == "pixel").items():
                report[f"trivial_{kind}_{name}"] = value
        report["mask_fraction"] = units.float().mean()
        return loss, report

    # ------------------------------------------------------------------ optimizer interface

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        if self.decoder is not None:
            names |= {f"decoder.{n}" for n, _ in self.decoder.named_parameters()
                      if "pos_embed" in n or n in ("mask_token", "decoder_cls_token")}
        return names

    # ------------------------------------------------------------------ pictures

    @torch.no_grad()
    def images(self, batch: dict, index: int = 0) -> dict[str, torch.Tensor]:
        """TensorBoard pictures of one clip: input frames with the mask it trained with, HOG target vs
        prediction drawn as oriented-gradient glyphs, and for pixel targets masked input | target |
        reconstruction (visible patches as they are), one row per temporal token."""
        was_training = self.training
        self.eval()
        one = {k: v[index:index + 1] for k, v in batch.items() if k in ("video", "mask")}
        video, units = one["video"], self.masks(one)
        tokens = self.forward_encoder(video, units)
        self.train(was_training)
        s = self.temporal_stride
        frames = video[0, :, ::s].transpose(0, 1).float()  # (t, 3, H, W)
        lo, hi = frames.amin(dim=(1, 2, 3), keepdim=True), frames.amax(dim=(1, 2, 3), keepdim=True)
        frames = (frames - lo) / (hi - lo + 1e-6)
        t, H, W = frames.shape[0], frames.shape[2], frames.shape[3]
        mask = upsample_mask(units, (t, H, W))[0].float()  # (t, H, W)
        shaded = frames * (1 - 0.6 * mask[:, None])  # masked regions darker
        out = {"mask/input": _tile(shaded)}
        if "hog" in self.heads:
            target = self.targets(video)["hog"][0]
            pred = self.heads["hog"](tokens[0]).float()
            render = lambda v: _render_hog(v, self.token_grid, self.hog.nbins, self.hog.cell_size)  # noqa: E731
            both = torch.cat([render(target), render(pred)], dim=-1)  # target | prediction
            out["hog/target_vs_prediction"] = _tile(both[:, None].expand(-1, 3, -1, -1))
        if "pixel" in self.heads:  # masked input | target | reconstruction (MAE's picture)
            pred = self.heads["pixel"](tokens[0]).float()  # (t·h·w, ph·pw·3), per-patch normalized
            th, tw = self.token_grid[1:]
            ph, pw = H // th, W // tw
            # undo the normalization with each patch's own mean and std (as MAE's visualization does)
            patches = frames.reshape(t, 3, th, ph, tw, pw).permute(0, 2, 4, 3, 5, 1).reshape(t * th * tw, -1)
            mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            recon = torch.where(upsample_mask(units, self.token_grid).flatten()[:, None], pred * std + mean, patches)
            recon = recon.reshape(t, th, tw, ph, pw, 3).permute(0, 5, 1, 3, 2, 4).reshape(t, 3, H, W)
            out["pixel/masked_target_reconstruction"] = torch.cat([_tile(shaded), _tile(frames), _tile(recon)], -1)
        return out


# MaskFeat is the task in its mask_token + hog corner; the name stays for its callers and checkpoints
MaskFeat = MaskedModeling


def _tile(frames: torch.Tensor, max_rows: int = 4) -> torch.Tensor:
    """(t, 3, H, W) -> (3, rows·H, W): the first temporal tokens stacked vertically."""
    return torch.cat(list(frames[:max_rows].clamp(0, 1).cpu()), dim=1)


def _render_hog(vec: torch.Tensor, grid, nbins: int, cell: int) -> torch.Tensor:
    """Per-token HOG vectors (t·h·w, 3·nbins·ch·cw) -> (t, h·ch·cell, w·cw·cell) glyph images:
    each cell shows a line per bin, perpendicular to the gradient direction, as bright as
    the bin's energy (summed over the colour channels)."""
    t, h, w = grid
    ch = cw = int(math.isqrt(vec.shape[1] // (3 * nbins)))
    cells = vec.view(t, h, w, 3, nbins, ch, cw).clamp(min=0).sum(3)  # (t, h, w, nbins, ch, cw)
    cells = cells.permute(0, 1, 4, 2, 5, 3).reshape(t, h * ch, w * cw, nbins)  # (t, Hc, Wc, nbins)
    glyphs = _glyphs(nbins, cell, vec.device)  # (nbins, cell, cell)
    img = torch.einsum("tyxb,bij->tyixj", cells, glyphs).reshape(t, h * ch * cell, w * cw * cell)
    return img / img.amax().clamp(min=1e-6)


def _glyphs(nbins: int, size: int, device) -> torch.Tensor:
    """(nbins, size, size): a centred line per orientation bin, at the bin's mid angle + 90°."""
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size, device=device) - c, torch.arange(size, device=device) - c,
                            indexing="ij")
    out = []
    for b in range(nbins):
        # the reference's angle atan2(gx, gy) is measured from the vertical axis
        theta = (b + 0.5) * math.pi / nbins + math.pi / 2
        dist = (xx * math.cos(theta) - yy * math.sin(theta)).abs()  # distance to the line
        out.append((dist < 0.6).float())
    return torch.stack(out)
