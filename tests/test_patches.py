"""The grid: patchify/unpatchify, the neighbour table and context gathering against plain loops."""

import pytest
import torch

from vwe.patches import OFFSETS, gather_context, gather_neighbours, neighbour_table, patchify, unpatchify


def test_patchify_unpatchify_round_trip():
    x = torch.rand(3, 3, 32, 32)
    p = patchify(x)
    assert p.shape == (3, 16, 3, 8, 8)
    assert torch.equal(unpatchify(p), x)


def test_patchify_matches_slicing():
    x = torch.rand(2, 3, 32, 32)
    p = patchify(x)
    for k in range(16):
        r, c = divmod(k, 4)  # row-major grid
        assert torch.equal(p[:, k], x[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8])


def test_neighbour_table_known_rows():
    t = neighbour_table()
    assert t.shape == (16, 8) and t.dtype == torch.long
    assert t[0].tolist() == [-1, -1, -1, -1, 1, -1, 4, 5]
    assert t[5].tolist() == [0, 1, 2, 4, 6, 8, 9, 10]
    assert t[15].tolist() == [10, 11, -1, 14, -1, -1, -1, -1]
    real = (t >= 0).sum(1).tolist()
    # corners 3 real neighbours, edges 5, interior 8
    assert sorted(set(real)) == [3, 5, 8]
    assert real.count(3) == 4 and real.count(5) == 8 and real.count(8) == 4


def test_gather_context_matches_loop_reference():
    x = torch.rand(4, 3, 32, 32)
    ctx = gather_context(patchify(x))
    assert ctx.shape == (4, 16, 8, 3, 8, 8)
    # Reference: cut every neighbour straight out of the image with explicit loops.
    for k in range(16):
        r, c = divmod(k, 4)
        for j, (dr, dc) in enumerate(OFFSETS):
            rr, cc = r + dr, c + dc
            if 0 <= rr < 4 and 0 <= cc < 4:
                expected = x[:, :, 8 * rr:8 * rr + 8, 8 * cc:8 * cc + 8]
            else:
                expected = torch.zeros(4, 3, 8, 8)
            assert torch.equal(ctx[:, k, j], expected), (k, j)


def indexed_gather(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """The table-indexed gather, written independently: slot -1 reads `fill`."""
    padded = torch.cat([x, fill.expand(x.shape[0], 1, *fill.shape)], dim=1)
    index = neighbour_table()
    return padded[:, torch.where(index < 0, x.shape[1], index)]


def test_gather_neighbours_equals_the_table_gather_values_and_gradients():
    x = torch.randn(3, 16, 5, dtype=torch.float64, requires_grad=True)
    fill = torch.randn(5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 16, 8, 5, dtype=torch.float64)  # a loss that tells every slot apart
    grads = []
    for gather in (gather_neighbours, indexed_gather):
        out = gather(x, fill)
        assert out.shape == (3, 16, 8, 5)
        grads.append((out, *torch.autograd.grad((out * weights).sum(), (x, fill))))
    for ours, ref in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    # the fill's gradient collects all 44 outside slots of the 16 targets (4 corners x 5, 8 edges x 3)
    assert (neighbour_table() < 0).sum() == 44


def test_gather_neighbours_refuses_a_wrong_fill_or_grid():
    with pytest.raises(ValueError, match="fill has shape"):
        gather_neighbours(torch.zeros(2, 16, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="square grid"):
        gather_neighbours(torch.zeros(2, 15, 4), torch.zeros(4))


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 3, 32, 30), (2, 3, 30, 30)])
def test_bad_images_are_refused(shape):
    with pytest.raises(ValueError, match="square|divisible|shape"):
        patchify(torch.rand(shape))


def test_a_grid_of_any_patch_size_channels_and_dtype():
    # patch 1 is a valid grid (every pixel a patch); uint8 pixels and one channel cut like any others
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    p = patchify(x, patch=1)
    assert p.shape == (2, 16, 1, 1, 1) and p.dtype == torch.uint8
    assert torch.equal(p.flatten(1), x.flatten(1))  # row-major: patch k is pixel (k // 4, k % 4)
    assert torch.equal(unpatchify(p), x)
    assert patchify(torch.rand(3, 5, 12, 12), patch=4).shape == (3, 9, 5, 4, 4)


@pytest.mark.parametrize("patch", [0, -8, 8.0, 2.5, True])
def test_a_patch_size_that_is_not_a_positive_int_is_refused(patch):
    message = f"patch must be a positive int \\(pixels per side\\), got {patch!r}"
    with pytest.raises(ValueError, match=message):
        patchify(torch.rand(2, 3, 32, 32), patch=patch)


def test_a_batch_that_is_not_four_dimensional_is_refused_with_its_shape():
    message = r"^x must be images of shape \(B, C, H, W\), got float32 \(3, 32, 32\)"
    with pytest.raises(ValueError, match=message):
        patchify(torch.rand(3, 32, 32))


@pytest.mark.parametrize("shape", [(2, 16, 3, 8), (2, 16, 3, 8, 4), (2, 16, 3, 4, 8)])
def test_unpatchify_refuses_what_is_not_square_patches(shape):
    with pytest.raises(ValueError, match=r"expected patches of shape \(B, N, C, P, P\)"):
        unpatchify(torch.zeros(shape))


def test_gather_neighbours_keeps_the_items_dtype():
    # a float64 fill (a tower's zero-patch feature computed apart) must not promote float32 items
    x = torch.rand(2, 16, 3)
    fill = torch.rand(3, dtype=torch.float64)
    out = gather_neighbours(x, fill)
    assert out.dtype == torch.float32
    assert torch.equal(out, indexed_gather(x, fill.float()))


def test_patchify_refuses_a_bad_patch_size():
    with pytest.raises(ValueError, match="not divisible by the patch size 5: use 32x32 images"):
        patchify(torch.rand(1, 3, 32, 32), patch=5)
    with pytest.raises(ValueError, match="patch must be a positive int"):
        patchify(torch.rand(1, 3, 32, 32), patch=0)
