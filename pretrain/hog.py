"""MaskFeat regression targets: batched HOG features and normalized pixels per token.

MaskFeat (Wei et al., 2022) regresses, for every masked token, the histogram of
oriented gradients of the input frames it covers. This module builds those targets on
the device that holds the clip, with no gradients:

* `HOGLayer` turns frames (N, C, H, W) into per-cell histograms (N, C', nbins, H/c, W/c).
  `mode="maskfeat"` (default) is the reference convention of facebookresearch/SlowFast
  (`slowfast/models/operators.py`, `HOGLayerC`); `mode="skimage"` reproduces
  `skimage.feature.hog(..., cells_per_block=(1, 1), channel_axis=-1)` and serves as a
  test oracle for the shared machinery (binning, cell pooling, layout).
* `hog_targets` picks one frame per temporal token and groups cells per output token
  (reference: `MaskMViT._get_hog_label_3d` in `slowfast/models/masked.py`).
* `pixel_targets` gives MAE-style per-patch normalized pixels in the same token order.

Conventions: SlowFast `operators.py` (HOGLayerC) and `masked.py` (MaskMViT).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["HOGLayer", "hog_targets", "pixel_targets"]

_MODES = ("maskfeat", "skimage")
# Elements per CPU chunk of frames: two 224x224 RGB frames, whose temporaries (~10 MiB)
# stay in L3 and are reused between calls; measured best of 1, 2, 4, 8 and 16 frames.
_CPU_CHUNK_ELEMENTS = 2 * 3 * 224 * 224


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Targets are computed in float32 whatever the input (bf16 / fp16 clips, integer
    # frames); float64 inputs keep float64 so the skimage oracle can be matched tightly.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class HOGLayer(nn.Module):
    """Histogram of oriented gradients per non-overlapping cell, batched, no gradients.

    Args:
        nbins: orientation bins over [0, pi) (unsigned gradients).
        cell_size: cell side in pixels. Frames of any size >= 2x2: the partial cells at the
            right and bottom edge are dropped (H // cell rows, W // cell columns of cells),
            their pixels still serving as gradient neighbours, as the reference does.
        mode: "maskfeat" (reference MaskFeat convention, default) or "skimage".

    mode="maskfeat" (SlowFast `operators.py` HOGLayerC): each
    channel separately; reflect padding 1; 3x3 Sobel cross-correlation with
    kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and ky = kx^T; magnitude sqrt(gx^2 + gy^2);
    angle atan2(gx, gy) (this argument order); bin = floor(angle / pi * nbins) mod nbins,
    hard assignment; magnitudes summed over each cell; each channel's histogram per
    cell L2-normalized (eps 1e-12). Output (N, C, nbins, H/cell, W/cell).

    mode="skimage" (scikit-image `feature/_hog.py`, `_hoghistogram.pyx`): central
    differences x[i+1] - x[i-1] (not halved), zero gradient on the border rows/columns;
    per pixel the channel with the largest gradient magnitude (first one on ties);
    orientation rad2deg(atan2(g_row, g_col)) mod 180 in float64, bin i holds
    [180/nbins * i, 180/nbins * (i+1)); magnitudes averaged over the cell; L2-Hys per
    cell (cells_per_block=(1, 1)): v / sqrt(|v|^2 + 1e-10), clip at 0.2, renormalize
    the same way. Output (N, 1, nbins, H/cell, W/cell): the single channel is the
    merged colour channel, so `out[n, 0].permute(1, 2, 0)` equals skimage's
    `hog(img, ..., feature_vector=False)[:, :, 0, 0, :]` (n_cells_row, n_cells_col, nbins).

    The Sobel kernels are buffers named and shaped like the reference's (`weight_x`,
    `weight_y`, (3, 1, 3, 3)) so reference MaskFeat checkpoints (`hogs.0.weight_x`) load
    into a model holding this layer; forward applies them in separable form (tested to
    equal F.conv2d with the buffers). All work is tensor ops on the input's device. On
    CPU the layer keeps its per-chunk temporaries between calls (~10 MiB at 224x224, not
    part of the state dict), so one layer must not be called from two threads at once.
    """

    def __init__(self, nbins: int = 9, cell_size: int = 8, mode: str = "maskfeat"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if nbins < 1 or cell_size < 1:
            raise ValueError(f"nbins and cell_size must be >= 1, got {nbins}, {cell_size}")
        self.nbins = nbins
        self.cell_size = cell_size
        self.mode = mode
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("weight_x", kx.view(1, 1, 3, 3).repeat(3, 1, 1, 1))
        self.register_buffer("weight_y", kx.t().reshape(1, 1, 3, 3).repeat(3, 1, 1, 1))

    def extra_repr(self) -> str:
        return f"nbins={self.nbins}, cell_size={self.cell_size}, mode={self.mode!r}"

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, C, H, W) -> (N, C, nbins, H/cell, W/cell) ("maskfeat") or
        (N, 1, nbins, H/cell, W/cell) ("skimage"); float32 (float64 for float64 input)."""
        if frames.ndim != 4:
            raise ValueError(f"expected frames (N, C, H, W), got shape {tuple(frames.shape)}")
        _, _, H, W = frames.shape
        c = self.cell_size
        if H < max(2, c) or W < max(2, c):
            raise ValueError(f"frame size {H}x{W} is smaller than one {c}x{c} cell (or 2x2)")
        # Targets must not depend on the training precision: no autocast in here.
        with torch.autocast(device_type=frames.device.type, enabled=False):
            if self.mode == "maskfeat":
                return self._maskfeat(frames.to(_compute_dtype(frames)))
            hist = self._skimage(frames)  # (N, 1, H/cell, W/cell, nbins)
            return hist.permute(0, 1, 4, 2, 3).contiguous()

    def _maskfeat(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> (N, C, nbins, H/cell, W/cell), the reference convention."""
        N, C, H, W = x.shape
        c = self.cell_size
        out = x.new_empty(N, C, self.nbins, H // c, W // c)
        # On CPU, frames go through in chunks whose ~10 full-size temporaries stay in
        # cache and are reused from call to call (fresh large tensors cost a page fault
        # per 4 KiB on first touch); on GPU in one chunk (the caching allocator reuses).
        step = max(1, _CPU_CHUNK_ELEMENTS // x[0].numel()) if x.device.type == "cpu" else N
        scratch = self._scratch_for(x, min(step, N))
        for start in range(0, N, step):
            chunk = x[start : start + step]
            n = len(chunk)
            self._maskfeat_chunk(chunk, {k: v[:n] for k, v in scratch.items()}, out[start : start + n])
        return out

    def _scratch_for(self, x: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Temporaries for chunks of up to n frames like x's; kept between calls on CPU."""
        _, C, H, W = x.shape
        key = (n, C, H, W, x.dtype, x.device)
        cached = getattr(self, "_scratch", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        c, k = self.cell_size, 2 * self.nbins + 1
        f = {"dtype": x.dtype, "device": x.device}
        # Slot of each pixel's cell: the votes of pixel (y, x) go to slots
        # base[y, x] + [0, k), with k = 2*nbins + 1 unfolded phases per cell. Pixels of the
        # partial cells at the right / bottom edge vote into one extra cell, discarded (only
        # allocated when there are partial cells).
        hc, wc = H // c, W // c
        rows = torch.arange(H, device=x.device) // c
        cols = torch.arange(W, device=x.device) // c
        cell = torch.where((rows[:, None] < hc) & (cols[None, :] < wc), rows[:, None] * wc + cols[None, :], hc * wc)
        base = cell * k + self.nbins
        # Slot indices are built in floating point (exact below 2^24 in float32).
        cells = hc * wc + int(H % c > 0 or W % c > 0)
        exact = x.dtype == torch.float64 or cells * k < 2**24
        scratch = {
            # Central differences with the border rows (dx) / columns (dy) left for the
            # reflect padding; the other border is 0 by reflection and never written.
            "dx": torch.zeros(n, C, H + 2, W, **f),
            "dy": torch.zeros(n, C, H, W + 2, **f),
            "gx": torch.empty(n, C, H, W, **f),
            "gy": torch.empty(n, C, H, W, **f),
            "magnitude": torch.empty(n, C, H, W, **f),
            "phase": torch.empty(n, C, H, W, dtype=x.dtype if exact else torch.float64, device=x.device),
            "index": torch.empty(n, C, H, W, dtype=torch.long, device=x.device),
            "votes": torch.empty(n, C, cells * k, **f),
            "base": base.to(x.dtype if exact else torch.float64).expand(n, C, H, W),
        }
        if x.device.type == "cpu":
            self._scratch = (key, scratch)
        return scratch

    def _maskfeat_chunk(self, x: torch.Tensor, s: dict[str, torch.Tensor], out: torch.Tensor) -> None:
        """x (n, C, H, W) -> out (n, C, nbins, H/cell, W/cell), through the scratch tensors s."""
        n, C, H, W = x.shape
        nb, c = self.nbins, self.cell_size
        # Sobel cross-correlation with reflect padding 1, in separable form:
        # kx = [1, 2, 1]^T [1, 0, -1] and ky = kx^T, the same numbers as F.conv2d with the
        # weight_x / weight_y buffers (a test checks it), 2.5-20x faster on CPU than
        # oneDNN's depthwise 3x3 conv. Reflection makes the left - right difference 0 on
        # the first and last column, and pads its rows with rows 1 and H-2.
        dx, dy = s["dx"], s["dy"]
        torch.sub(x[..., :-2], x[..., 2:], out=dx[:, :, 1:-1, 1:-1])
        dx[:, :, 0] = dx[:, :, 2]
        dx[:, :, -1] = dx[:, :, -3]
        gx = torch.add(dx[:, :, :-2], dx[:, :, 2:], out=s["gx"]).add_(dx[:, :, 1:-1], alpha=2)
        torch.sub(x[:, :, :-2], x[:, :, 2:], out=dy[:, :, 1:-1, 1:-1])  # top - bottom
        dy[..., 0] = dy[..., 2]
        dy[..., -1] = dy[..., -3]
        gy = torch.add(dy[..., :-2], dy[..., 2:], out=s["gy"]).add_(dy[..., 1:-1], alpha=2)
        magnitude = torch.mul(gx, gx, out=s["magnitude"]).addcmul_(gy, gy).sqrt_()
        # HOGLayerC: phase = atan2(gx, gy) / pi * nbins in [-nbins, nbins], hard-binned by
        # its floor. A NaN pixel (NaN / inf input) votes into slot 0 with a NaN magnitude,
        # so the targets turn NaN as in the reference instead of indexing out of range.
        phase = torch.atan2(gx, gy, out=s["phase"]).mul_(nb / math.pi).floor_().nan_to_num_(nan=0.0)
        index = s["index"].copy_(phase.add_(s["base"]))
        flat = s["votes"].zero_()
        flat.view(n * C, -1).scatter_add_(1, index.view(n * C, H * W), magnitude.view(n * C, H * W))
        votes = flat[..., :(H // c) * (W // c) * (2 * nb + 1)].view(n, C, H // c, W // c, 2 * nb + 1)
        # votes[..., p + nbins] holds phase p in [-nbins, nbins]; bin = p mod nbins
        # (Python-style): folded here, on the small histogram, not per pixel.
        hist = votes[..., :nb].add_(votes[..., nb : 2 * nb])
        hist[..., 0] += votes[..., 2 * nb]
        norm = torch.linalg.vector_norm(hist, dim=-1, keepdim=True).clamp_(min=1e-12)
        out.copy_(hist.div_(norm).permute(0, 1, 4, 2, 3))

    def _skimage(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, C, H, W) -> (N, 1, H/cell, W/cell, nbins), skimage's convention."""
        # Gradients in the dtype skimage would use (`utils._supported_float_type`):
        # float32 for float32 / half inputs, float64 for float64 and integer images.
        low = frames.dtype in (torch.float32, torch.float16, torch.bfloat16)
        x = frames.to(torch.float32 if low else torch.float64)
        g_row = torch.zeros_like(x)
        g_col = torch.zeros_like(x)
        g_row[:, :, 1:-1, :] = x[:, :, 2:, :] - x[:, :, :-2, :]
        g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
        # Dominant channel per pixel, compared in the image's dtype like skimage does.
        best = torch.hypot(g_row, g_col).argmax(dim=1, keepdim=True)  # (N, 1, H, W)
        g_row = g_row.gather(1, best).double()
        g_col = g_col.gather(1, best).double()
        magnitude = torch.hypot(g_row, g_col)
        orientation = torch.remainder(torch.atan2(g_row, g_col) * (180.0 / math.pi), 180.0)
        # skimage keeps a pixel in bin i iff edges[i] <= orientation < edges[i + 1], with
        # the edges computed as (180 / nbins) * i in float64; bucketize reproduces exactly
        # that. An orientation that rounds to 180.0 falls in no bin there (bin == nbins).
        edges = torch.arange(self.nbins + 1, dtype=torch.float64, device=x.device)
        edges = edges * (180.0 / self.nbins)
        bins = torch.bucketize(orientation, edges, right=True) - 1
        magnitude = magnitude.masked_fill(bins >= self.nbins, 0.0)
        bins = bins.clamp(0, self.nbins - 1)
        hist = _cell_sums(bins, magnitude, self.cell_size, self.nbins) / self.cell_size**2
        # ^ skimage averages over the cell. L2-Hys with cells_per_block=(1, 1): each cell
        # is its own block (eps 1e-5).
        hist = _l2_normalize(hist, eps=1e-5, squared_eps=True)
        hist = _l2_normalize(hist.clamp(max=0.2), eps=1e-5, squared_eps=True)
        return hist.to(_compute_dtype(frames))


def _cell_sums(bins: torch.Tensor, magnitude: torch.Tensor, cell_size: int, k: int) -> torch.Tensor:
    """bins (n, C, H, W) integer-valued in [0, k), magnitude (n, C, H, W) ->
    (n, C, H/cell, W/cell, k): each pixel's magnitude added to its bin of its cell, with
    one scatter_add per (frame, channel) plane instead of a dense one-hot."""
    hc, wc = magnitude.shape[-2] // cell_size, magnitude.shape[-1] // cell_size
    bins, magnitude = bins[..., :hc * cell_size, :wc * cell_size], magnitude[..., :hc * cell_size, :wc * cell_size]
    n, C, H, W = magnitude.shape  # partial cells at the right / bottom dropped, as skimage does
    rows = torch.arange(H, device=bins.device) // cell_size
    cols = torch.arange(W, device=bins.device) // cell_size
    base = (rows[:, None] * wc + cols[None, :]) * k  # (H, W) first slot of the cell
    index = (bins.long() + base).view(n * C, H * W)
    out = magnitude.new_zeros(n * C, hc * wc * k)
    out.scatter_add_(1, index, magnitude.reshape(n * C, H * W))
    return out.view(n, C, hc, wc, k)


def _l2_normalize(
    hist: torch.Tensor, *, eps: float, squared_eps: bool = False
) -> torch.Tensor:
    """hist (N, C, h, w, nbins) -> same shape, each histogram scaled to unit L2 norm.
    `squared_eps`: skimage divides by sqrt(|v|^2 + eps^2); otherwise by max(|v|, eps) as
    F.normalize in HOGLayerC. (Bins last: ~30x faster on CPU than F.normalize(dim=2).)"""
    sq = (hist * hist).sum(dim=-1, keepdim=True)
    norm = torch.sqrt(sq + eps * eps) if squared_eps else torch.sqrt(sq).clamp_(min=eps)
    return hist / norm


def _check_clip(clip: torch.Tensor) -> None:
    if clip.ndim != 5:
        raise ValueError(f"expected clip (B, C, T, H, W), got shape {tuple(clip.shape)}")


@torch.no_grad()
def hog_targets(
    hog_layer: HOGLayer,
    clip: torch.Tensor,
    *,
    temporal_stride: int = 2,
    grid: tuple[int, int, int],
) -> torch.Tensor:
    """HOG regression targets per output token.

    clip (B, 3, T, H, W) -> (B, t*h*w, C'*nbins*ch*cw) with (t, h, w) = grid,
    ch = H / cell / h, cw = W / cell / w and C' the HOG layer's output channels (3 for
    "maskfeat"). One frame per temporal token is used: frames 0, s, 2s, ... for
    temporal_stride s (the patch embed's temporal stride), each HOG'd as an image.
    Within a token the vector index is ((c*nbins + bin)*ch + dy)*cw + dx; tokens are in
    (t, h, w) order (SlowFast `masked.py`, `_get_hog_label_3d`). At 16x224^2 with grid
    (8, 14, 14): (B, 1568, 108).
    """
    _check_clip(clip)
    B, _, T, H, W = clip.shape
    t, h, w = grid
    cell = hog_layer.cell_size
    if temporal_stride < 1 or T % temporal_stride or T // temporal_stride != t:
        raise ValueError(
            f"{T} frames with temporal_stride={temporal_stride} do not give {t} temporal tokens"
        )
    if (H // cell) % h or (W // cell) % w:
        raise ValueError(
            f"the {H // cell}x{W // cell} cells of {cell}x{cell} pixels in a {H}x{W} frame do not "
            f"divide into a {h}x{w} token grid"
        )
    frames = clip[:, :, ::temporal_stride].transpose(1, 2).flatten(0, 1)  # (B*t, C, H, W)
    hog = hog_layer(frames)  # (B*t, C', nbins, H/cell, W/cell)
    _, c_out, nbins, hc, wc = hog.shape
    ch, cw = hc // h, wc // w
    hog = hog.view(B, t, c_out, nbins, h, ch, w, cw)
    hog = hog.permute(0, 1, 4, 6, 2, 3, 5, 7)  # (B, t, h, w, C', nbins, ch, cw)
    return hog.reshape(B, t * h * w, c_out * nbins * ch * cw)


@torch.no_grad()
def pixel_targets(
    clip: torch.Tensor,
    *,
    patch: tuple[int, int, int] = (2, 16, 16),
    grid: tuple[int, int, int] | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-patch normalized pixels (MAE-style targets), tokens in (t, h, w) order.

    clip (B, C, T, H, W) -> (B, t*h*w, pt*ph*pw*C) float32 with (pt, ph, pw) = patch and
    (t, h, w) = (T/pt, H/ph, W/pw) (checked against `grid` when given). The per-token
    vector is ordered (dt, dy, dx, c) and standardized by its own mean and (unbiased)
    variance: (x - mean) / sqrt(var + eps), as SlowFast `masked.py`
    `_get_pixel_label_3d`. The reference's default (one frame per temporal token) is
    `pixel_targets(clip[:, :, ::2], patch=(1, 16, 16))`.
    """
    _check_clip(clip)
    B, C, T, H, W = clip.shape
    pt, ph, pw = patch
    if T % pt or H % ph or W % pw:
        raise ValueError(f"clip {T}x{H}x{W} is not divisible by patch {pt}x{ph}x{pw}")
    t, h, w = T // pt, H // ph, W // pw
    if grid is not None and tuple(grid) != (t, h, w):
        raise ValueError(
            f"patch {tuple(patch)} on clip {T}x{H}x{W} gives grid {(t, h, w)}, not {tuple(grid)}"
        )
    with torch.autocast(device_type=clip.device.type, enabled=False):
        x = clip.to(_compute_dtype(clip)).reshape(B, C, t, pt, h, ph, w, pw)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, t, h, w, pt, ph, pw, C)
        x = x.reshape(B, t * h * w, pt * ph * pw * C)
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)
