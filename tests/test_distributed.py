"""`vwe.distributed`'s arithmetic, in one process: what each of several processes takes of a global
batch, of an evaluation and of the augmentation drawn for a batch, with the rank and world size set by
hand. The processes themselves (gloo under torchrun, kills) are tests/torchrun/test_torchrun.py's."""

import pytest
import torch

from vwe import distributed


@pytest.fixture
def processes(monkeypatch):
    """Set this process's (rank, world) as if torchrun had started `world` of them."""
    def set_to(rank: int, world: int) -> None:
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world", lambda: world)
    return set_to


def test_one_process_takes_everything_and_is_the_main_one(capsys):
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    assert distributed.batch_slice(7) == slice(0, 7) and distributed.shard(7) == slice(0, 7)
    batch, params = (torch.arange(6),), (torch.arange(12),)
    assert distributed.local_part(batch, params) == (batch, params)
    t = torch.tensor([1.5])
    assert distributed.sum_across(t) is t and t.item() == 1.5
    distributed.print0("on rank 0", 3)
    assert capsys.readouterr().out == "on rank 0 3\n"


def test_the_slices_of_a_batch_and_the_shards_of_an_evaluation_cover_each_item_once(processes):
    slices, shards = [], []
    for rank in range(3):
        processes(rank, 3)
        slices.append(list(range(12))[distributed.batch_slice(12)])
        shards.append(list(range(10))[distributed.shard(10)])
    assert slices == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert shards == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]  # sizes differ by one at most


def test_a_batch_that_does_not_split_evenly_is_refused(processes):
    processes(1, 4)
    distributed.check_batch(8)
    with pytest.raises(ValueError, match="batch of 10 images does not split into 4 equal slices"):
        distributed.check_batch(10)
    with pytest.raises(ValueError, match="divisible by 4"):
        distributed.local_part((torch.zeros(6, 3),), ())


def test_each_process_takes_its_images_and_their_draws_in_every_view(processes):
    images = torch.arange(4)  # a global batch of 4 images
    draws = torch.arange(3 * 4) * 10  # 3 views, view-major: draw v * 4 + i is view v of image i
    processes(1, 2)  # the second of two processes: images 2 and 3
    (mine,), (params,) = distributed.local_part((images,), (draws,))
    assert mine.tolist() == [2, 3]
    assert params.tolist() == [20, 30, 60, 70, 100, 110]  # views 0, 1, 2 of images 2 and 3, view-major


def test_only_the_main_process_prints(processes, capsys):
    processes(1, 2)
    assert not distributed.is_main()
    distributed.print0("from rank 1")
    assert capsys.readouterr().out == ""
