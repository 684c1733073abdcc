"""The 4x4 patch grid: patchify/unpatchify, the neighbour table and context gathering.

Letters (docs/design.md, Notation): B batch, N = 16 patches, K = 8 neighbours, P = 8 patch size, C channels.
Patch k sits at row k // 4, column k % 4 (row-major). The context of a target is its eight
neighbours in the fixed order of `OFFSETS`; a neighbour outside the grid is a zero patch.
"""

from __future__ import annotations

import torch

from vwe.checks import check_images, is_int

GRID = 4  # patches per side
PATCH = 8  # pixels per patch side
N_PATCHES = GRID * GRID
# (drow, dcol) of the context slots. The order is positional and must never change:
# the decoder learns which of its 8 input slots sits where.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
N_NEIGHBOURS = len(OFFSETS)


def _check_grid(x: torch.Tensor, patch: int) -> None:
    """Images of any dtype and channels that a grid of `patch`-sized squares tiles exactly."""
    if not is_int(patch) or patch < 1:
        raise ValueError(f"patch must be a positive int (pixels per side), got {patch!r}")
    check_images(x, dtype="any", shape=("B", "C", "H", "W"))
    _, _, h, w = x.shape
    if h != w:
        raise ValueError(f"images must be square to form a grid, got H={h}, W={w}")
    if h % patch != 0:
        raise ValueError(f"image size {h} is not divisible by the patch size {patch}: use "
                         f"{GRID * PATCH}x{GRID * PATCH} images (a {GRID}x{GRID} grid of {PATCH}x{PATCH} "
                         f"patches) or crop to a multiple of {patch}")


def patchify(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Cut images into a row-major grid of patches.

    x: (B, C, H, W) -> (B, G*G, C, P, P) with G = H // P; (B, 3, 32, 32) -> (B, 16, 3, 8, 8).
    """
    _check_grid(x, patch)
    b, c, h, _ = x.shape
    g = h // patch
    x = x.reshape(b, c, g, patch, g, patch)  # (B, C, row, y, col, x)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, row, col, C, y, x)
    return x.reshape(b, g * g, c, patch, patch)


def unpatchify(p: torch.Tensor) -> torch.Tensor:
    """Inverse of `patchify`: (B, G*G, C, P, P) -> (B, C, G*P, G*P)."""
    if p.dim() != 5 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"expected patches of shape (B, N, C, P, P), got {tuple(p.shape)}")
    b, n, c, patch, _ = p.shape
    g = round(n**0.5)
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = p.reshape(b, g, g, c, patch, patch).permute(0, 3, 1, 4, 2, 5)  # (B, C, row, y, col, x)
    return x.reshape(b, c, g * patch, g * patch)


def neighbour_table(grid: int = GRID) -> torch.Tensor:
    """(N, K) LongTensor: entry [k, j] is the patch in context slot j of target k, -1 outside the grid."""
    table = torch.full((grid * grid, N_NEIGHBOURS), -1, dtype=torch.long)
    for k in range(grid * grid):
        row, col = divmod(k, grid)
        for j, (dr, dc) in enumerate(OFFSETS):
            r, c = row + dr, col + dc
            if 0 <= r < grid and 0 <= c < grid:
                table[k, j] = r * grid + c
    return table


def gather_neighbours(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Arrange per-patch items into contexts: (B, N, *S) -> (B, N, K, *S).

    `fill` (shape S) stands in for neighbours outside the grid. The same gather serves pixels
    (fill = a zero patch) and tower features (fill = the tower's output on a zero patch), which is
    what makes the shared encoding equal to the literal one. Context slot j of every target is one
    shifted window of the grid framed by `fill`, so the gather is 8 slices: slices need no index
    table (nothing to copy to the device, which a CUDA graph forbids), and their backward adds the
    windows back into the frame instead of scattering with atomic adds as an indexed gather's does.
    Equals `x[:, neighbour_table()]` with -1 read as `fill` (tests/test_patches.py).
    """
    b, n = x.shape[:2]
    grid = round(n**0.5)
    if grid * grid != n:
        raise ValueError(f"{n} patches do not form a square grid")
    if fill.shape != x.shape[2:]:
        raise ValueError(f"fill has shape {tuple(fill.shape)}, expected {tuple(x.shape[2:])}")
    s = x.shape[2:]
    fill = fill.to(x.dtype)
    cells = x.reshape(b, grid, grid, *s)
    side = fill.expand(b, grid, 1, *s)
    cells = torch.cat([side, cells, side], dim=2)  # (B, G, G+2, *S)
    top = fill.expand(b, 1, grid + 2, *s)
    framed = torch.cat([top, cells, top], dim=1)  # (B, G+2, G+2, *S): the grid in a frame of fill
    windows = [framed[:, 1 + dr:1 + dr + grid, 1 + dc:1 + dc + grid] for dr, dc in OFFSETS]
    return torch.stack(windows, dim=3).reshape(b, n, N_NEIGHBOURS, *s)  # (B, G, G, K, *S) -> (B, N, K, *S)


def gather_context(patches: torch.Tensor) -> torch.Tensor:
    """Contexts of every target: (B, N, C, P, P) -> (B, N, K, C, P, P), zero patches outside."""
    if patches.dim() != 5:
        raise ValueError(f"expected patches of shape (B, N, C, P, P), got {tuple(patches.shape)}")
    return gather_neighbours(patches, patches.new_zeros(patches.shape[2:]))
