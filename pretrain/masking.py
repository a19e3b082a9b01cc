"""Mask generators for MaskFeat pretraining: which mask units of a clip get hidden.

A mask unit at 16x224^2 is one temporal token x 8x8 patch tokens (2 frames x 32x32
pixels), so the default unit grid is 8x7x7. `CubeMaskGenerator` reproduces the reference
cube masking of facebookresearch/SlowFast (`slowfast/datasets/transform.py`,
`MaskingGenerator3D`, built by `slowfast/datasets/kinetics.py` `_gen_mask`): random
spatio-temporal blocks are added until round(ratio * units) units are masked. It is
batched: the Python loop runs over block placements, each placement draws all its tries
for the whole batch at once and counts overlaps with a summed-volume table, so no Python
code runs per unit. `upsample_mask` maps units to token grids.

`TokenMaskGenerator` makes MAE's masks, one unit per patch token, with a fixed number of
visible tokens per clip (the encoder then runs on equal-length sequences): "random" as
SlowFast `masked.py` `_mae_random_masking` (argsort of uniform noise, keep int(L * (1 - r))),
"tube" as VideoMAE `masking_generator.py` (one 2-D mask of int(r * h * w) tokens repeated
over time).
"""

from __future__ import annotations

import math

import torch

__all__ = ["CubeMaskGenerator", "TokenMaskGenerator", "upsample_mask"]

_MODES = ("cube", "tube", "random")
# Tries per pass of the block loop (samples x max_attempts): small enough that torch runs
# the per-try ops on one thread. Parallel regions do not pay off on ~1k elements, and on
# a busy CPU a float64 sqrt on 3200 elements was measured at 15 ms instead of ~5 us.
_TRIES_PER_GROUP = 1600


class CubeMaskGenerator:
    """Random block masks over a (t, h, w) grid of mask units; True = masked.

    Args:
        grid: mask-unit grid (t, h, w).
        mask_ratio: fraction to mask; the budget is round(mask_ratio * units).
        min_area, max_area: range of a block's target area (units per time step);
            max_area defaults to h * w (SlowFast: max = units per frame, min = max // 5).
        aspect: range of the block's aspect ratio h / w, drawn log-uniformly.
        max_temporal: longest block in time steps (default t).
        max_attempts: tries per block before giving up.
        mode: "cube" (reference), "tube" (one 2-D block mask repeated over time, budget
            round(ratio * h * w) per time step) or "random" (exactly the budget of units,
            uniformly).

    Each try (mode "cube"): area ~ U[min_area, max_area], r = exp(U[log a0, log a1]),
    bh = round(sqrt(area * r)), bw = round(sqrt(area / r)), bt ~ U{1..max_temporal},
    corner uniform among the positions where the block fits. It is accepted only if
    bh < h and bw < w and it adds between 1 and the remaining budget new units. Blocks are
    added until the budget is met or a block finds no acceptable try in max_attempts
    (then the mask stays below the budget). At 8x7x7 and ratio 0.4: 157 of 392 units at
    most, 155.7 on average (the reference, measured).
    """

    def __init__(
        self,
        grid: tuple[int, int, int] = (8, 7, 7),
        mask_ratio: float = 0.4,
        min_area: float = 9,
        max_area: float | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        max_temporal: int | None = None,
        max_attempts: int = 100,
        mode: str = "cube",
    ):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        t, h, w = (int(g) for g in grid)
        if min(t, h, w) < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        max_area = h * w if max_area is None else max_area
        if not 0 < min_area <= max_area:
            raise ValueError(f"need 0 < min_area <= max_area, got {min_area}, {max_area}")
        if not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"need 0 < aspect[0] <= aspect[1], got {aspect}")
        max_temporal = t if max_temporal is None else max_temporal
        if not 1 <= max_temporal <= t:
            raise ValueError(f"max_temporal must be in [1, {t}], got {max_temporal}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.grid = (t, h, w)
        self.mask_ratio = mask_ratio
        self.min_area, self.max_area = float(min_area), float(max_area)
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.max_temporal = max_temporal
        self.max_attempts = max_attempts
        self.mode = mode
        units = h * w if mode == "tube" else t * h * w
        self.budget = round(mask_ratio * units)  # per time step in "tube" mode

    def __repr__(self) -> str:
        return (
            f"CubeMaskGenerator(grid={self.grid}, mask_ratio={self.mask_ratio}, "
            f"budget={self.budget}, mode={self.mode!r})"
        )

    def __call__(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        return_blocks: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[list[tuple[int, ...]]]]:
        """-> mask (batch_size, t, h, w) bool, True = masked, on the generator's device
        (CPU by default). With return_blocks (modes "cube" / "tube"), also the accepted
        blocks per sample, each (front, top, left, bt, bh, bw, new_units), for checks."""
        t, h, w = self.grid
        device = generator.device if generator is not None else torch.device("cpu")
        if self.mode == "random":
            if return_blocks:
                raise ValueError('mode "random" places no blocks')
            noise = torch.rand(batch_size, t * h * w, generator=generator, device=device)
            rank = noise.argsort(dim=1).argsort(dim=1)  # a uniform random permutation
            return (rank < self.budget).view(batch_size, t, h, w)
        tube = self.mode == "tube"
        grid, max_temporal = ((1, h, w), 1) if tube else (self.grid, self.max_temporal)
        # Samples go through the block loop in groups (see _TRIES_PER_GROUP).
        group = max(1, _TRIES_PER_GROUP // self.max_attempts)
        masks, blocks = [torch.zeros(0, *grid, dtype=torch.bool, device=device)], []
        for start in range(0, batch_size, group):
            n = min(group, batch_size - start)
            m, b = self._place_blocks(n, grid, max_temporal, generator, device, return_blocks)
            masks.append(m)
            blocks.extend(b or [])
        mask = torch.cat(masks)
        if tube:
            mask = mask.expand(batch_size, t, h, w).contiguous()
        return (mask, blocks) if return_blocks else mask

    def _place_blocks(self, B, grid, max_temporal, generator, device, record):
        """-> mask (B, t, h, w) bool and, if record, the accepted blocks per sample.

        One iteration of the loop places at most one block in every unfinished sample,
        as one iteration of the reference's `while mask_count < num_masking_patches`
        does: its max_attempts tries are drawn at once, the first acceptable one wins.
        """
        t, h, w = grid
        A = self.max_attempts
        mask = torch.zeros(B, t, h, w, dtype=torch.bool, device=device)
        remaining = torch.full((B,), self.budget, dtype=torch.long, device=device)
        active = remaining > 0
        blocks: list[list[tuple[int, ...]]] | None = [[] for _ in range(B)] if record else None
        tt = torch.arange(t, device=device)
        hh = torch.arange(h, device=device)
        ww = torch.arange(w, device=device)
        tries = torch.arange(A, device=device)
        lo, span = self.min_area, self.max_area - self.min_area
        log_lo, log_span = self.log_aspect[0], self.log_aspect[1] - self.log_aspect[0]

        while bool(active.any()):
            # All tries of this block for the whole batch in one draw; float64 so that
            # the sizes round like the reference's Python floats.
            u = torch.rand(6, B, A, generator=generator, device=device, dtype=torch.float64)
            area = lo + span * u[0]
            ratio = torch.exp(log_lo + log_span * u[1])
            bh = torch.round(torch.sqrt(area * ratio)).long()  # (B, A); half to even, like round()
            bw = torch.round(torch.sqrt(area / ratio)).long()
            bt = _uniform_int(u[2], max_temporal) + 1
            # Corner uniform over the positions where the block fits (sizes clamped so
            # that tries failing the size rule still index inside the grid).
            bh_c, bw_c = bh.clamp(max=h), bw.clamp(max=w)
            front = _uniform_int(u[3], t - bt + 1)
            top = _uniform_int(u[4], h - bh_c + 1)
            left = _uniform_int(u[5], w - bw_c + 1)
            covered = _box_sums(mask, front, top, left, bt, bh_c, bw_c)  # (B, A)
            new = bt * bh_c * bw_c - covered
            ok = (bh < h) & (bw < w) & (new >= 1) & (new <= remaining[:, None]) & active[:, None]
            # First acceptable try per sample (A where none): the reference stops there.
            first = torch.where(ok, tries, A).amin(dim=1)  # (B,)
            placed = first < A
            pick = first.clamp(max=A - 1)[:, None]
            chosen = torch.stack([front, top, left, bt, bh_c, bw_c, new], dim=1)  # (B, 7, A)
            chosen = chosen.gather(2, pick[:, None, :].expand(B, 7, 1)).squeeze(2)  # (B, 7)
            chosen[:, 6] *= placed
            f, y, x, dt, dh, dw = chosen[:, :6, None].unbind(1)  # (B, 1) each
            in_t = (tt >= f) & (tt < f + dt)  # (B, t)
            in_h = (hh >= y) & (hh < y + dh)  # (B, h)
            in_w = (ww >= x) & (ww < x + dw)  # (B, w)
            box = in_t[:, :, None, None] & in_h[:, None, :, None] & in_w[:, None, None, :]
            mask |= box & placed[:, None, None, None]
            remaining -= chosen[:, 6]
            active = placed & (remaining > 0)
            if blocks is not None:
                for b in placed.nonzero().flatten().tolist():
                    blocks[b].append(tuple(chosen[b].tolist()))
        return mask, blocks


class TokenMaskGenerator:
    """MAE masks over a (t, h, w) token grid, True = masked, the same count in every clip.

    mode "random": keep int(t·h·w · (1 - mask_ratio)) tokens, chosen as the smallest values of
    uniform noise (SlowFast `_mae_random_masking`: 156 of 1568 at ratio 0.9);
    mode "tube": mask int(mask_ratio · h·w) positions of one frame, the same in every time step
    (VideoMAE `TubeMaskingGenerator`: 176 of 196 per frame at 0.9, 160 of 1568 kept).
    """

    MODES = ("random", "tube")

    def __init__(self, grid: tuple[int, int, int], mask_ratio: float = 0.9, mode: str = "random"):
        if mode not in self.MODES:
            raise ValueError(f"MAE mask mode must be one of {self.MODES}, got {mode!r}")
        t, h, w = (int(g) for g in grid)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
        self.grid, self.mask_ratio, self.mode = (t, h, w), mask_ratio, mode
        if mode == "random":
            self.keep = int(t * h * w * (1 - mask_ratio))
        else:
            self.keep = t * (h * w - int(mask_ratio * h * w))
        if self.keep < 1:
            raise ValueError(f"mask ratio {mask_ratio} keeps no token of the {t}x{h}x{w} token grid ({mode} mode)")

    def __repr__(self) -> str:
        return f"TokenMaskGenerator(grid={self.grid}, mask_ratio={self.mask_ratio}, keep={self.keep}, mode={self.mode!r})"

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """-> mask (batch_size, t, h, w) bool, True = masked, exactly self.keep False per clip."""
        t, h, w = self.grid
        device = generator.device if generator is not None else torch.device("cpu")
        if self.mode == "tube":
            noise = torch.rand(batch_size, 1, h * w, generator=generator, device=device)
            rank = noise.argsort(-1).argsort(-1)  # (B, 1, h·w), a uniform permutation per clip
            return (rank >= self.keep // t).expand(batch_size, t, h * w).reshape(batch_size, t, h, w)
        noise = torch.rand(batch_size, t * h * w, generator=generator, device=device)
        rank = noise.argsort(-1).argsort(-1)  # ascending noise is kept, as in the reference
        return (rank >= self.keep).view(batch_size, t, h, w)


def _uniform_int(u: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """u (B, A) uniform in [0, 1), n (B, A) or int, >= 1 -> integers uniform in [0, n)."""
    return (u * n).long().clamp(max=n - 1)  # the clamp guards u * n rounding up to n


def _box_sums(mask, front, top, left, bt, bh, bw):
    """mask (B, t, h, w) bool; box corners and sizes (B, A) -> (B, A) count of masked
    units inside each box, by inclusion-exclusion on a summed-volume table."""
    B, t, h, w = mask.shape
    # S[:, a, b, c] = units masked in mask[:, :a, :b, :c]
    S = torch.zeros(B, t + 1, h + 1, w + 1, dtype=torch.long, device=mask.device)
    S[:, 1:, 1:, 1:] = mask.long().cumsum(1).cumsum(2).cumsum(3)
    # The 8 corners (B, A, 8), signs + for an even number of lower bounds.
    a = torch.stack([front + bt, front], -1)[..., :, None, None]  # (B, A, 2, 1, 1)
    b = torch.stack([top + bh, top], -1)[..., None, :, None]
    c = torch.stack([left + bw, left], -1)[..., None, None, :]
    corners = ((a * (h + 1) + b) * (w + 1) + c).flatten(1)  # (B, A*8)
    values = S.view(B, -1).gather(1, corners).view(B, -1, 8)  # (B, A, 8)
    sign = torch.tensor([1, -1, -1, 1, -1, 1, 1, -1], device=mask.device)
    return (values * sign).sum(-1)


def upsample_mask(mask: torch.Tensor, token_grid: tuple[int, int, int]) -> torch.Tensor:
    """mask (B, t, h, w) -> (B, T, H, W) by repeating each unit over the (T/t, H/h, W/w)
    tokens it covers, e.g. 8x7x7 units -> 8x56x56 patch tokens or 8x14x14 output tokens
    (the reference resizes with nearest interpolation, which is the same for integer
    factors; `slowfast/models/masked.py`). Raises ValueError if a factor is not whole."""
    if mask.ndim != 4:
        raise ValueError(f"expected mask (B, t, h, w), got shape {tuple(mask.shape)}")
    factors = []
    for unit, token in zip(mask.shape[1:], token_grid):
        if token % unit:
            raise ValueError(
                f"token grid {tuple(token_grid)} is not a multiple of mask grid "
                f"{tuple(mask.shape[1:])}"
            )
        factors.append(token // unit)
    out = mask
    for dim, k in zip((1, 2, 3), factors):
        if k > 1:
            out = out.repeat_interleave(k, dim=dim)
    return out
