"""MViTv2 (and MViTv1) for images (B, 3, H, W) and videos (B, 3, T, H, W): one implementation.

Exact to the reference implementations (facebookresearch/SlowFast `video_model_builder.py`
+ `attention.py`, torchvision `mvit_v2_s` / `mvit_v1_b`, timm `mvitv2_*`): the equivalence
tests in tests/test_mvit_reference.py load their random-init weights and compare logits.

Order of this file (timm style): architecture config -> helpers -> PatchEmbed ->
MultiScaleAttention -> MultiScaleBlock -> MViT.

Shape letters: B batch, N tokens, D width, h heads, c head width, T/H/W grid sizes.
A "grid" is the token grid (t, h, w) for videos or (h, w) for images; tokens are always
flattened in that order, with the optional class token first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

Grid = tuple[int, ...]


@dataclass(frozen=True)
class MViTConfig:
    """Architecture only: no run settings. Sizes for videos are (T, H, W), for images (H, W)."""

    depths: tuple[int, ...] = (1, 2, 11, 2)  # blocks per stage
    embed_dim: int = 96  # width of stage 1; doubles every stage
    num_heads: int = 1  # heads of stage 1; double every stage
    video: bool = True
    input_size: Grid = (16, 224, 224)  # the size rel-pos tables / abs pos are made for
    patch_kernel: Grid = (3, 7, 7)
    patch_stride: Grid = (2, 4, 4)
    patch_padding: Grid = (1, 3, 3)
    # depthwise conv pooling of q, k, v; None: stride + 1 along axes with a stride > 1, else 1, per
    # pool (SlowFast without POOL_KVQ_KERNEL, e.g. MViTv1-B 32x3: kv kernel (1, 9, 9) at stride (1, 8, 8))
    pool_kernel: Grid | None = (3, 3, 3)
    pool_q_every_block: bool = True  # MViTv2 pools q in every block; MViTv1 only where q has a stride
    # q stride of the first block of stages 2, 3, ... (MaskFeat pretraining sets the last to 1s)
    stage_q_strides: tuple[Grid, ...] = ((1, 2, 2), (1, 2, 2), (1, 2, 2))
    kv_stride: Grid = (1, 8, 8)  # kv stride of block 0; divided by every q stride after it
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dim_mul_in_att: bool = True  # True: widen in the first block's attention; False: in the last block's MLP
    cls_token: bool = True
    abs_pos: bool = False  # MViTv1-style absolute position embedding
    rel_pos: bool = True  # decomposed relative position bias over h, w (and t for videos)
    residual_pooling: bool = True
    residual_pooling_cls: bool = False  # SlowFast/torchvision: False; timm / fb image MViTv2: True
    norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    num_classes: int = 400  # 0: no head (pretraining form)
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens)
    fc_norm: bool = False  # True: LayerNorm after pooling (MaskFeat finetune head: mean -> norm)
    final_norm: bool = True  # False: no final LayerNorm (MaskFeat pretraining form)
    head_dropout: float = 0.0
    head_init_scale: float = 1.0
    mask_token: bool = False  # learnable token for masked patches (MaskFeat pretraining)
    # VideoMAE: a fixed 1-D sinusoid table over the patch tokens (a buffer, not a parameter)
    sincos_pos: bool = False
    # how the learned absolute position tables start: "trunc_normal" (std 0.02, the reference) or "sincos"
    # (sin-cos values over the token grid, `sincos_grid_table`; still learned): a strong position signal
    # from step 0, which a short MAE run needs to find the same place in other frames (docs/mae.md)
    pos_init: str = "trunc_normal"

    def __post_init__(self):
        n = 3 if self.video else 2
        for name in ("input_size", "patch_kernel", "patch_stride", "patch_padding", "pool_kernel", "kv_stride"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"MViTConfig.{name} needs {n} values for a {'video' if self.video else 'image'} model")
        if len(self.stage_q_strides) != len(self.depths) - 1:
            raise ValueError("MViTConfig.stage_q_strides needs one stride per stage after the first")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"MViTConfig.global_pool must be 'token' or 'avg', not {self.global_pool!r}")
        if self.global_pool == "token" and not self.cls_token:
            raise ValueError("global_pool='token' needs cls_token=True")
        if self.sincos_pos and (self.abs_pos or self.cls_token):
            raise ValueError("sincos_pos (VideoMAE) replaces abs_pos and has no class token")
        if self.pos_init not in POS_INITS:
            raise ValueError(f"MViTConfig.pos_init must be one of {POS_INITS}, not {self.pos_init!r}")

    @property
    def plain(self) -> bool:
        """A plain ViT: no pooling, no rel-pos, no residual pooling; the encoder can run on any
        subset of the patch tokens (MAE), as long as each keeps its absolute position embedding."""
        return (len(self.depths) == 1 and not self.rel_pos and not self.residual_pooling
                and all(math.prod(self.pool_kernel_for(s)) == 1 for s in ((1,) * len(self.input_size),
                                                                          tuple(self.kv_stride)))
                and math.prod(self.kv_stride) == 1)

    @property
    def depth(self) -> int:
        return sum(self.depths)

    def patch_grid(self, size: Grid) -> Grid:
        """Token grid after the patch embed for an input of `size` ((T,) H, W)."""
        return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in
                     zip(size, self.patch_kernel, self.patch_stride, self.patch_padding))

    def pool_kernel_for(self, stride: Grid) -> Grid:
        """The kernel of a q / kv pool with this stride (SlowFast: stride + 1 when unset)."""
        if self.pool_kernel is not None:
            return tuple(self.pool_kernel)
        return tuple(s + 1 if s > 1 else s for s in stride)

    def block_layout(self) -> list[dict]:
        """Per block: dim_in, dim_out, heads, q stride, kv stride (reference schedule).

        Stage s has width embed_dim·2^s and num_heads·2^s heads. The first block of every
        stage after the first pools q; the kv stride starts at `kv_stride` and is divided
        (floor, min 1) by each q stride (SlowFast POOL_KV_STRIDE_ADAPTIVE).
        """
        n = len(self.input_size)
        dims = [self.embed_dim * 2 ** s for s in range(len(self.depths))]
        kv, layout = tuple(self.kv_stride), []
        for s, d in enumerate(self.depths):
            for j in range(d):
                q = tuple(self.stage_q_strides[s - 1]) if (j == 0 and s > 0) else (1,) * n
                kv = tuple(max(a // b, 1) for a, b in zip(kv, q))
                if self.dim_mul_in_att:
                    dim_in = dims[max(s - 1, 0)] if j == 0 else dims[s]
                    dim_out = dims[s]
                else:
                    dim_in = dims[s]
                    dim_out = dims[s + 1] if (j == d - 1 and s + 1 < len(dims)) else dims[s]
                layout.append(dict(dim_in=dim_in, dim_out=dim_out, heads=self.num_heads * 2 ** s,
                                   q_stride=q, kv_stride=kv))
        return layout


# ----------------------------------------------------------------------------- helpers


def pooled_grid(grid: Grid, kernel: Grid, stride: Grid) -> Grid:
    """Grid after a pooling with padding kernel // 2 (the reference convention)."""
    return tuple((g + 2 * (k // 2) - k) // s + 1 for g, k, s in zip(grid, kernel, stride))


def resize_pos_embed(pos: torch.Tensor, grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Absolute position embedding (1, prod(grid), D) over a token grid -> (1, prod(new_grid), D).

    Spatial (h, w) tables are resized bicubically (as MAE / timm resize ViT tables), temporal (t,)
    tables linearly, joint (t, h, w) tables trilinearly (SlowFast `_get_pos_embed`).
    """
    if tuple(grid) == tuple(new_grid):
        return pos
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(grid)]
    table = pos.reshape(1, *grid, -1).movedim(-1, 1)  # (1, D, *grid)
    table = F.interpolate(table, size=tuple(new_grid), mode=mode, align_corners=False)
    return table.flatten(2).transpose(1, 2)  # (1, prod(new_grid), D)


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed 1-D sinusoid position table of VideoMAE (`get_sinusoid_encoding_table` in its
    modeling_finetune.py): angle(p, j) = p / 10000^(2·(j // 2) / dim); sin on even j, cos on odd j."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, 2 * (j // 2) / dim).to(torch.float64)  # (n, dim)
    return torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


POS_INITS = ("trunc_normal", "sincos")


def sincos_grid_table(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """(prod(grid), dim) sin-cos position table over a token grid, rows in grid order: timm's
    `build_sincos2d_pos_embed` (the table of MAE, He et al.) for any number of axes. With f = dim //
    (2·axes) frequencies ω_k = 10000^(-k / f), channels are [sin(p_a·ω_k) for each axis a, k; then
    cos(...) the same]; a spare channel or two at the end stay 0. Each axis owns its own channels, so a
    (t, h, w) table is the sum of a temporal and a spatial table: `split_sincos_table`."""
    f = dim // (2 * len(grid))
    if f == 0:
        raise ValueError(f"a sin-cos table over {len(grid)} axes needs at least {2 * len(grid)} channels, not {dim}")
    omega = 1.0 / 10000 ** (torch.arange(f, dtype=torch.float64) / f)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij"))
    angle = coords.flatten(1).t()[..., None] * omega  # (N, axes, f)
    table = torch.cat([angle.sin().flatten(1), angle.cos().flatten(1)], 1)  # (N, 2·axes·f)
    return F.pad(table, (0, dim - table.shape[1])).float()


def split_sincos_table(grid: tuple[int, int, int], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3-D `sincos_grid_table` of (t, h, w) as separate tables: temporal (t, dim) and spatial
    (h·w, dim), with temporal[t] + spatial[h·w] = the 3-D table's row (t, h, w)."""
    t, h, w = grid
    full = sincos_grid_table(grid, dim).view(t, h * w, dim)
    f = dim // 6
    channel = torch.arange(dim)
    temporal_channels = (channel < 6 * f) & (channel % (3 * f) < f)  # sin and cos of axis 0
    return full[:, 0] * temporal_channels, full[0] * ~temporal_channels


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, c) -> (length, c) by 1-D linear interpolation along L (reference `get_rel_pos`)."""
    if table.shape[0] == length:
        return table
    # (L, c) -> (1, c, L) -> interpolate -> (length, c)
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


def rel_pos_index(q: int, k: int, device=None) -> torch.Tensor:
    """(q, k) table rows for query i, key j: i·max(k/q,1) − j·max(q/k,1) + (k−1)·max(q/k,1)."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    dist = (torch.arange(q, device=device)[:, None] * q_ratio
            - torch.arange(k, device=device)[None, :] * k_ratio + (k - 1) * k_ratio)
    return dist.long()


def rel_pos_terms(q: torch.Tensor, q_grid: Grid, k_grid: Grid, tables: list) -> list[torch.Tensor]:
    """Decomposed relative position terms, one per grid axis.

    q: (B, h, Nq, c) patch-token queries (pooled and normed, not scaled); tables[a]: (L_a, c)
    or None. Returns for each axis a with a table: (B, h, Nq, k_a), the logit bias q_i·R_a[i_a, j_a].
    """
    letters = "thw"[-len(q_grid):]
    B, nh, _, c = q.shape
    r_q = q.reshape(B, nh, *q_grid, c)  # (B, h, (t,) h, w, c)
    terms = []
    for a, table in enumerate(tables):
        if table is None:
            continue
        R = resize_rel_pos(table, 2 * max(q_grid[a], k_grid[a]) - 1)
        R = R[rel_pos_index(q_grid[a], k_grid[a], q.device)]  # (q_a, k_a, c)
        g = letters
        terms.append(torch.einsum(f"bn{g}c,{g[a]}kc->bn{g}k", r_q, R.to(q.dtype)).reshape(B, nh, -1, k_grid[a]))
    return terms


def key_coordinate_codes(k_grid: Grid, axes: list[int], prefix: int, dtype, device) -> torch.Tensor:
    """(prefix + Nk, K): per key token, one-hot codes of its coordinate along each of `axes`, side
    by side (K = sum of k_grid[a]); prefix (class) tokens get zero rows."""
    j = torch.arange(math.prod(k_grid), device=device)  # flat key index in grid order
    codes = []
    for a in axes:
        coord = j // math.prod(k_grid[a + 1:]) % k_grid[a]  # (Nk,)
        codes.append(coord[:, None] == torch.arange(k_grid[a], device=device))  # (Nk, k_a)
    return F.pad(torch.cat(codes, 1).to(dtype), (0, 0, prefix, 0))


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_grid: Grid, k_grid: Grid,
                      tables: list, prefix: int, scale: float) -> torch.Tensor:
    """Attention with the decomposed relative position bias, class tokens excluded from the bias.

    q: (B, h, prefix + Nq, c), k, v: (B, h, prefix + Nk, c) -> (B, h, prefix + Nq, c). Computes
    softmax(scale·q·kᵀ + bias)·v where bias[i, j] = Σ_a rel_a[i, j_a] (rel_pos_terms; zero in the
    rows and columns of class tokens).

    Each term depends on the key only through one coordinate j_a, so the bias is a dot product:
    append the terms to the query and one-hot codes of the key's coordinates (divided by the
    scale) to the key, then scale·q'·k' = scale·q·k + bias. Why not pass the bias as SDPA's mask:
    a (B, h, Nq, Nk) mask costs several full memory passes to build and pad, and a mask that needs
    a gradient keeps PyTorch off its fused CPU kernel (math fallback: materialized softmax, slower
    backward). The fused kernels want one head width, so v is zero-padded and the extra output
    columns are dropped; the width is rounded up to a multiple of 8, which the CUDA kernels need.
    """
    B, nh, _, c = q.shape
    axes = [a for a, t in enumerate(tables) if t is not None]
    K = sum(k_grid[a] for a in axes)
    pad = -(c + K) % 8  # zero columns after the K codes
    terms = rel_pos_terms(q[:, :, prefix:], q_grid, k_grid, tables)  # [(B, h, Nq, k_a)]
    rel = F.pad(torch.cat(terms, -1), (0, pad, prefix, 0))  # (B, h, prefix + Nq, K + pad)
    codes = F.pad(key_coordinate_codes(k_grid, axes, prefix, q.dtype, q.device), (0, pad)) / scale
    q = torch.cat([q, rel], -1)  # (B, h, prefix + Nq, c + K + pad)
    k = torch.cat([k, codes.expand(B, nh, -1, -1)], -1)  # (B, h, prefix + Nk, c + K + pad)
    v = F.pad(v, (0, K + pad))  # (B, h, prefix + Nk, c + K + pad)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :c]


def pool_tokens(x: torch.Tensor, grid: Grid, pool: nn.Module | None, prefix: int) -> tuple[torch.Tensor, Grid]:
    """Pool the patch tokens of x over the grid; prefix (class) tokens bypass the pool.

    x: (B, prefix + N, C) tokens in grid order -> (B, prefix + N', C), new grid.
    The patch tokens are viewed channels-last (no copy) for the pool.
    """
    if pool is None:
        return x, grid
    B, _, C = x.shape
    cls, x = x[:, :prefix], x[:, prefix:]
    x = x.reshape(B, *grid, C).movedim(-1, 1)  # (B, C, (T,) H, W), channels-last strides
    x = pool(x)
    grid = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)  # (B, N', C)
    return torch.cat([cls, x], dim=1) if prefix else x, grid


class _DepthwiseConv(torch.autograd.Function):
    """Depthwise conv (groups = channels, no bias) whose backward is written as forward convs.

    oneDNN's backward for these small depthwise kernels runs 5-20× slower than its forward on CPU
    (torch 2.15, 3×3×3: stage-3 q pool 0.75 ms forward, 11 ms backward; stage-1 kv pool 0.4 ms vs
    16 ms), and the pools' backward was ~10 % of a training step. Correlations are fast, so:
    - grad_input = conv(grad_out zero-upsampled by the stride, flipped kernel, padding k - 1 - p);
    - grad_weight (stride 1) = conv(x, grad_out as the kernel), one group per (batch, channel);
      strided pools keep oneDNN's weight gradient, which is fast there.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        return conv(x, weight, None, stride, padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        B, C, kernel, n = x.shape[0], x.shape[1], weight.shape[2:], x.dim() - 2
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            up = grad_out
            if any(st > 1 for st in stride):  # put grad_out[p] at input position stride·p
                up = torch.zeros_like(x)
                up[(..., *[slice(0, st * g, st) for st, g in zip(stride, grad_out.shape[2:])])] = grad_out
            grad_x = conv(up, weight.flip(list(range(2, 2 + n))), None, 1,
                          [k - 1 - p for k, p in zip(kernel, padding)], groups=C)
        if ctx.needs_input_grad[1]:
            if all(st == 1 for st in stride):
                # grad_w[c, δ] = Σ_b Σ_p grad_out[b, c, p] · x_pad[b, c, p + δ]
                w = conv(x.reshape(1, B * C, *x.shape[2:]), grad_out.reshape(B * C, 1, *grad_out.shape[2:]),
                         None, 1, padding, groups=B * C)  # (1, B·C, *kernel)
                grad_w = w.reshape(B, C, 1, *kernel).sum(0)
            else:
                grad_w = torch.ops.aten.convolution_backward(
                    grad_out, x, weight, None, stride, padding, [1] * n, False, [0] * n, C,
                    [False, True, False])[1]
        return grad_x, grad_w, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: Grid, padding: Grid) -> torch.Tensor:
    """x: (B, C, (T,) H, W), weight (C, 1, *kernel) -> (B, C, *pooled grid); faster backward on CPU
    (not under autocast, whose casts the custom backward would not see)."""
    if (x.is_cpu and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and (x.requires_grad or weight.requires_grad)):
        return _DepthwiseConv.apply(x, weight, tuple(stride), tuple(padding))
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    return conv(x, weight, None, stride, padding, groups=x.shape[1])


# ----------------------------------------------------------------------------- modules


class PatchEmbed(nn.Module):
    """Conv patch embedding: (B, 3, (T,) H, W) -> (B, N, D) tokens and their grid."""

    def __init__(self, cfg: MViTConfig, in_chans: int = 3):
        super().__init__()
        conv = nn.Conv3d if cfg.video else nn.Conv2d
        self.proj = conv(in_chans, cfg.embed_dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x = self.proj(x)  # (B, D, (T,) H, W)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class MultiScaleAttention(nn.Module):
    """Pooling attention with decomposed relative position bias and residual pooling.

    q, k, v come from the qkv Linear; each is pooled by a depthwise conv over the grid (kernel
    shared across heads, applied per head channel) and LayerNorm(head width). The rel-pos bias
    rides in scaled_dot_product_attention's dot products (rel_pos_attention), so the fused CPU /
    GPU kernels run without a mask, backward included.
    """

    def __init__(self, cfg: MViTConfig, dim: int, dim_out: int, heads: int, grid: Grid,
                 q_stride: Grid, kv_stride: Grid):
        """grid: the block's input grid at cfg.input_size (sizes the rel-pos tables)."""
        super().__init__()
        self.heads, self.dim_out = heads, dim_out
        self.head_dim = dim_out // heads
        self.scale = self.head_dim ** -0.5
        self.prefix = int(cfg.cls_token)
        self.residual_pooling, self.residual_pooling_cls = cfg.residual_pooling, cfg.residual_pooling_cls
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        conv = nn.Conv3d if cfg.video else nn.Conv2d

        def make_pool(stride):  # a pool exists when the kernel or the stride is larger than 1
            kernel = cfg.pool_kernel_for(stride)
            if math.prod(kernel) == 1 and math.prod(stride) == 1:
                return None, None
            pad = tuple(k // 2 for k in kernel)
            pool = conv(self.head_dim, self.head_dim, kernel, stride, pad, groups=self.head_dim, bias=False)
            return pool, nn.LayerNorm(self.head_dim, eps=cfg.norm_eps)

        pool_q = cfg.pool_q_every_block or math.prod(q_stride) > 1
        self.pool_q, self.norm_q = make_pool(q_stride) if pool_q else (None, None)
        self.pool_k, self.norm_k = make_pool(kv_stride)
        self.pool_v, self.norm_v = make_pool(kv_stride)
        self.q_stride, self.kv_stride = q_stride, kv_stride

        self.rel_pos_h = self.rel_pos_w = self.rel_pos_t = None
        if cfg.rel_pos:
            # table lengths follow the reference's floor division `size // stride` (not the conv
            # output size); when they differ at run time the tables are interpolated
            q_grid = tuple(g // s for g, s in zip(grid, q_stride))
            kv_grid = tuple(g // s for g, s in zip(grid, kv_stride))
            size = lambda a: 2 * max(q_grid[a], kv_grid[a]) - 1  # noqa: E731
            self.rel_pos_h = nn.Parameter(torch.zeros(size(-2), self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(size(-1), self.head_dim))
            if cfg.video:
                self.rel_pos_t = nn.Parameter(torch.zeros(size(0), self.head_dim))

    def _pool(self, x: torch.Tensor, grid: Grid, pool, norm) -> tuple[torch.Tensor, Grid]:
        """x: (B, prefix + N, h, c) -> pooled and normed (B, prefix + N', h, c)."""
        B, _, h, c = x.shape
        if pool is not None:
            # fold heads into the channel dim and use a weight repeated per head: one grouped
            # conv over all heads equals the reference's per-head conv with a shared kernel
            w = pool.weight.repeat(h, *([1] * (pool.weight.dim() - 1)))
            # a channels-last weight keeps oneDNN on its channels-last depthwise kernel (the patch
            # tokens already are a channels-last grid; the output comes back as (B, N', C) without
            # a copy): the stage-1 q pool runs ~4× faster than with a plain weight on CPU
            # With one input channel both layouts order memory alike, so it is a view; a clone to
            # channels-last would hand pool.weight a gradient with channels-last strides, which
            # DDP reports as "grad strides do not match bucket view"
            w = w.as_strided(w.shape, (w.stride(0), 1, *w.stride()[2:]))
            op = lambda t: depthwise_conv(t, w, pool.stride, pool.padding)  # noqa: E731
            x, grid = pool_tokens(x.flatten(2), grid, op, self.prefix)
            x = x.unflatten(2, (h, c))
        return (norm(x) if norm is not None else x), grid

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """x: (B, prefix + N, dim) -> (B, prefix + Nq, dim_out), q grid."""
        B, N, _ = x.shape
        # three Linears on the row blocks of qkv.weight (the same math as one): each output is
        # contiguous (B, N, h·c), so the pools read their patch tokens as a dense channels-last
        # grid and skip a layout copy (~3 % of the forward on CPU)
        bias = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        q, k, v = (F.linear(x, w, b).unflatten(-1, (self.heads, self.head_dim))  # 3 × (B, N, h, c)
                   for w, b in zip(self.qkv.weight.chunk(3), bias))
        q, q_grid = self._pool(q, grid, self.pool_q, self.norm_q)
        k, k_grid = self._pool(k, grid, self.pool_k, self.norm_k)
        v, _ = self._pool(v, grid, self.pool_v, self.norm_v)
        q_res = q  # (B, Nq, h, c), for residual pooling
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, N*, c)

        tables = [self.rel_pos_t, self.rel_pos_h, self.rel_pos_w][-len(grid):]
        if any(t is not None for t in tables):
            out = rel_pos_attention(q, k, v, q_grid, k_grid, tables, self.prefix, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, h, Nq, c)
        out = out.transpose(1, 2)  # (B, Nq, h, c)

        if self.residual_pooling:
            # one pass; q_res first so the sum takes its contiguous (B, Nq, h, c) layout
            out, attn = q_res + out, out
            if self.prefix and not self.residual_pooling_cls:
                out[:, :self.prefix] = attn[:, :self.prefix]  # class token: no residual (reference)
        out = out.reshape(B, -1, self.dim_out)  # (B, Nq, h·c)
        return self.proj(out), q_grid


class MultiScaleBlock(nn.Module):
    """Pre-norm block: pooled skip path + attention, then MLP; widening per dim_mul_in_att."""

    def __init__(self, cfg: MViTConfig, dim: int, dim_out: int, heads: int, grid: Grid,
                 q_stride: Grid, kv_stride: Grid, drop_path: float):
        super().__init__()
        self.dim, self.dim_out, self.dim_mul_in_att = dim, dim_out, cfg.dim_mul_in_att
        self.prefix = int(cfg.cls_token)
        att_dim = dim_out if cfg.dim_mul_in_att else dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = MultiScaleAttention(cfg, dim, att_dim, heads, grid, q_stride, kv_stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(att_dim, int(att_dim * cfg.mlp_ratio), dim_out, act_layer=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.pool_skip = None
        if math.prod(q_stride) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in q_stride)
            pool = nn.MaxPool3d if cfg.video else nn.MaxPool2d
            self.pool_skip = pool(kernel, q_stride, tuple(k // 2 for k in kernel))

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """x: (B, prefix + N, dim) -> (B, prefix + N', dim_out), new grid."""
        x_norm = self.norm1(x)
        x_attn, new_grid = self.attn(x_norm, grid)
        if self.proj is not None and self.dim_mul_in_att:
            x = self.proj(x_norm)  # the skip projection takes norm1(x) (reference)
        x = pool_tokens(x, grid, self.pool_skip, self.prefix)[0] + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if self.proj is not None and not self.dim_mul_in_att:
            x = self.proj(x_norm)  # ... or norm2(x) when the MLP widens
        return x + self.drop_path(x_mlp), new_grid


class MViT(nn.Module):
    """MViTv2 (or MViTv1: absolute position embeddings, no rel-pos) backbone + classification head.

    Interface shared with timm models: forward_features, forward_head(pre_logits=...),
    set_grad_checkpointing, no_weight_decay, group_matcher (timm layer decay), plus
    layer_id(name) for layer-wise lr decay and patch_grid / feature_grid for token layouts.
    """

    def __init__(self, cfg: MViTConfig, in_chans: int = 3):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.num_prefix_tokens = int(cfg.cls_token)
        self.patch_embed = PatchEmbed(cfg, in_chans)
        D = cfg.embed_dim
        grid = cfg.patch_grid(cfg.input_size)
        table_grid = tuple(s // p for s, p in zip(cfg.input_size, cfg.patch_stride))  # reference sizing

        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.mask_token else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.cls_token else None
        self.pos_embed = self.pos_embed_spatial = self.pos_embed_temporal = self.pos_embed_class = None
        if cfg.abs_pos and cfg.video:  # MViTv1: separate spatial, temporal and class embeddings
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, grid[1] * grid[2], D))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, grid[0], D))
            if cfg.cls_token:
                self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, D))
        elif cfg.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + math.prod(grid), D))
        if cfg.sincos_pos:  # fixed, so not in state dicts (VideoMAE checkpoints do not hold it either)
            self.register_buffer("pos_sincos", sinusoid_table(math.prod(grid), D)[None], persistent=False)

        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList()
        for i, spec in enumerate(cfg.block_layout()):
            self.blocks.append(MultiScaleBlock(cfg, spec["dim_in"], spec["dim_out"], spec["heads"], table_grid,
                                               spec["q_stride"], spec["kv_stride"], dpr[i]))
            table_grid = tuple(g // s for g, s in zip(table_grid, spec["q_stride"]))
        self.num_features = self.blocks[-1].dim_out
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ init & interface

    @torch.no_grad()
    def _sincos_pos_init(self):
        """cfg.pos_init="sincos": the learned position tables start as `sincos_grid_table` of the token
        grid (separate video tables: its temporal and spatial parts); class rows start at 0."""
        grid, D = self.cfg.patch_grid(self.cfg.input_size), self.cfg.embed_dim
        if self.pos_embed_spatial is not None:
            temporal, spatial = split_sincos_table(grid, D)
            self.pos_embed_temporal.copy_(temporal[None])
            self.pos_embed_spatial.copy_(spatial[None])
            if self.pos_embed_class is not None:
                self.pos_embed_class.zero_()
        elif self.pos_embed is not None:
            self.pos_embed.zero_()
            self.pos_embed[0, self.num_prefix_tokens:] = sincos_grid_table(grid, D)
        else:
            raise ValueError("pos_init='sincos' needs learned absolute position tables (abs_pos)")

    def init_weights(self):
        """trunc_normal(0.02) for Linear / Conv weights and tokens; zero biases (timm / torchvision)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or name in ("cls_token", "mask_token"):
                trunc_normal_(p, std=0.02)
        if self.cfg.pos_init == "sincos":
            self._sincos_pos_init()
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(self.cfg.head_init_scale)
                self.head.bias.mul_(self.cfg.head_init_scale)
        if isinstance(self.norm, nn.LayerNorm):
            # the reference's _init_weights (video_model_builder.py) gives LayerNorm biases 0.02; the
            # final norm is the one a finetune starts fresh (MaskFeat encoders have none), so start it alike
            nn.init.constant_(self.norm.bias, 0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters()
                if n in ("cls_token", "mask_token") or "pos_embed" in n or "rel_pos" in n}

    def layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay: 0 = embeddings, i + 1 = block i, depth + 1 = the rest."""
        if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.cfg.depth + 1

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer-decay grouping, the same ids as layer_id: final norm and head form the last
        group (timm's own (99999,) would merge the norm into the last block's group)."""
        return dict(stem=r"^cls_token|^mask_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^(?:norm|head)\.", (self.cfg.depth,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def patch_grid(self, size: Grid) -> Grid:
        """Token grid after the patch embed for an input of size ((T,) H, W)."""
        return self.cfg.patch_grid(tuple(size))

    def feature_grid(self, size: Grid) -> Grid:
        """Token grid of forward_features' output for an input of size ((T,) H, W)."""
        grid = self.patch_grid(size)
        for blk in self.blocks:
            grid = pooled_grid(grid, self.cfg.pool_kernel_for(blk.attn.q_stride), blk.attn.q_stride)
        return grid

    # ------------------------------------------------------------------ forward

    def pos_table(self, grid: Grid) -> torch.Tensor | None:
        """The absolute position embedding of (prefix + prod(grid)) tokens, (prefix + N, D) or
        (1, prefix + N, D); None without one. Resizes the tables when the grid differs from the
        config's (resize_pos_embed: spatial bicubic, temporal linear)."""
        g = self.cfg.patch_grid(self.cfg.input_size)
        if self.pos_embed_spatial is not None:  # MViTv1 video: table(t, h, w) = temporal(t) + spatial(h, w)
            sp = resize_pos_embed(self.pos_embed_spatial, g[1:], grid[1:])  # (1, h·w, D)
            tp = resize_pos_embed(self.pos_embed_temporal, g[:1], grid[:1])  # (1, t, D)
            pos = (sp[:, None] + tp[:, :, None]).flatten(0, 2)  # (t·h·w, D)
            if self.pos_embed_class is not None:
                # concatenated as rows: a (1, 1, D) slice of the (1, 1 + N, D) gradient would reach the
                # parameter with other strides, which DDP reports ("grad strides do not match")
                pos = torch.cat([self.pos_embed_class.view(1, -1), pos])  # (1 + t·h·w, D)
            return pos
        if self.pos_embed is not None:
            p = self.num_prefix_tokens
            return torch.cat([self.pos_embed[:, :p], resize_pos_embed(self.pos_embed[:, p:], g, grid)], 1)
        if self.cfg.sincos_pos:
            if tuple(grid) != tuple(g):
                raise ValueError(f"the fixed sinusoid table is made for a {list(g)} token grid, not {list(grid)}")
            return self.pos_sincos
        return None

    def _add_abs_pos(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """x: (B, prefix + N, D) -> x + position embedding (if the model has one)."""
        pos = self.pos_table(grid)
        return x if pos is None else x + pos

    def check_input(self, size: Grid) -> None:
        """A one-line ValueError when the patch embed does not tile an input of size ((T,) H, W)."""
        k, st, p = self.cfg.patch_kernel, self.cfg.patch_stride, self.cfg.patch_padding
        if any((s + 2 * pp - kk) % ss or s + 2 * pp < kk for s, kk, ss, pp in zip(size, k, st, p)):
            raise ValueError(f"a {'x'.join(map(str, size))} input is not tiled by the patch embed "
                             f"(kernel {list(k)}, stride {list(st)}, padding {list(p)})")

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                         keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 3, (T,) H, W) -> tokens (B, prefix + N_out, D_out) over feature_grid(...).

        mask: optional bool (B, *patch_grid) (True = masked); masked patch tokens are replaced
        by the mask token before position embeddings and blocks (MaskFeat).
        keep: optional long (B, K), the patch tokens to keep (MAE): only they go through the blocks,
        each with its own position embedding, gathered after the patch embed (SlowFast
        `_mae_forward_encoder`) -> (B, prefix + K, D). Needs a plain ViT (cfg.plain).
        """
        x, grid = self.patch_embed(x)  # (B, N, D)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("forward_features(mask=...) needs a model built with mask_token=True")
            x = torch.where(mask.flatten(1)[..., None], self.mask_token.to(x.dtype), x)
        pos = self.pos_table(grid)  # (1, prefix + N, D), (prefix + N, D) or None
        if keep is not None:
            if not self.cfg.plain:
                raise ValueError("keep= (dropping tokens) needs a plain ViT: no pooling, no rel-pos")
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
            if pos is not None:
                p = self.num_prefix_tokens
                pos = pos.reshape(-1, pos.shape[-1])  # (prefix + N, D)
                pos = torch.cat([pos[:p].expand(x.shape[0], -1, -1), pos[p:][keep]], 1)  # (B, prefix + K, D)
            grid = (keep.shape[1],)  # no longer a grid; plain blocks do not look at it
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if pos is not None:
            x = x + pos
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, grid = checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x, grid = blk(x, grid)
        return x if self.cfg.fc_norm else self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, prefix + N, D) -> logits (B, classes), or pooled features (B, D)."""
        x = x[:, 0] if self.cfg.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(1)
        if self.cfg.fc_norm:
            x = self.norm(x)
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, keep: torch.Tensor | None = None,
                tokens: bool = False) -> torch.Tensor:
        """-> logits (B, classes), or with tokens=True forward_features(x, mask, keep)'s tokens. Tasks call
        the model (not forward_features) so that `model.compile()`, which compiles calls, covers them."""
        x = self.forward_features(x, mask, keep)
        return x if tokens else self.forward_head(x)
