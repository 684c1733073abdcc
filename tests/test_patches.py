"""The grid: patchify/unpatchify, the neighbour table and context gathering against plain loops."""

import pytest
import torch

from vwe.patches import OFFSETS, gather_context, neighbour_table, patchify, unpatchify


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


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 3, 32, 30), (2, 3, 30, 30)])
def test_bad_images_are_refused(shape):
    with pytest.raises(ValueError, match="square|divisible|shape"):
        patchify(torch.rand(shape))
