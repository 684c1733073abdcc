"""Learning measurably happens on the real CIFAR-100 (skipped in one line where the archive is absent).

A few hundred steps of the context autoencoder rebuild held-out test patches far better than the best
constant guess (each channel's training mean), which is where an untrained decoder starts from.
"""

from real_cifar100 import ARCHIVE, VERIFIED_MD5, skip_without_real_cifar100

from vwe.config import get_config
from vwe.data import load_cifar100
from vwe.pretrain import held_out_loss, pretrain

skip_without_real_cifar100()


def test_context_autoencoder_learns_to_rebuild_real_cifar100_patches(tmp_path):
    (tmp_path / ARCHIVE.name).symlink_to(ARCHIVE)
    data = load_cifar100(tmp_path, md5=VERIFIED_MD5).cut(2000, 500)
    cfg = get_config("smoke", dataset="cifar100", tower="conv4", n_train=2000, n_test=500, epochs=2,
                     batch_size=32, lr=1e-3, augment=False)
    res = pretrain(cfg, tmp_path / "run", data=data, progress=False)
    losses = [m["test_loss"] for m in res.metrics]
    # The best constant: every pixel predicted by its channel's mean over the training images.
    train, test = data.train_images.float() / 255, data.test_images.float() / 255
    constant = ((test - train.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean().item()
    assert losses[-1] < 0.6 * constant, (losses, constant)
    assert losses[-1] < losses[0]
    assert abs(held_out_loss(res.model, data.test_images) - losses[-1]) < 1e-6  # the logged loss is real
    print(f"held-out MSE per epoch {losses}, best constant {constant:.5f}")
