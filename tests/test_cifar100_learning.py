"""Learning measurably happens on the real CIFAR-100 (skipped in one line where the archive is absent).

A few hundred steps of the context autoencoder rebuild held-out test patches far better than the best
constant guess (each channel's training mean), which is where an untrained decoder starts from; and the
context model the course ships beats the pixels and random weights under linear evaluation.
"""

from dataclasses import replace

from real_cifar100 import ARCHIVE, VERIFIED_MD5, skip_without_real_cifar100

from vwe.config import get_config
from vwe.course import load_shipped
from vwe.data import load_cifar100
from vwe.evaluate import extract_features, linear_eval, pixel_features, random_image_model
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


def test_the_shipped_context_model_beats_pixels_and_random_weights_on_real_cifar100(tmp_path):
    """The course's shipped model (checkpoints/, pretrained on 20 000 CIFAR-100 training images) is
    read on images it never saw in pretraining: its tower's features of the 16 patches (1024-d) beat a
    linear probe on the raw pixels and on [24]'s random ResNet-32 by more than three seed standard
    deviations each. (Its 8192-d context embedding does not clear the pixels by that much with a probe
    on 6 000 images: README, Results.)"""
    (tmp_path / ARCHIVE.name).symlink_to(ARCHIVE)
    data = load_cifar100(tmp_path, md5=VERIFIED_MD5).validation_split(10_000).cut(None, 2_000)
    data = replace(data, train_images=data.train_images[-6_000:], train_labels=data.train_labels[-6_000:])
    context = load_shipped("context").model
    random_tower = random_image_model("resnet32", seed=0).forward_features
    splits = (data.train_images, data.test_images)
    features = {
        "context": [extract_features(context, x, features="tower") for x in splits],
        "pixels": [pixel_features(x) for x in splits],
        "random": [extract_features(random_tower, x) for x in splits],
    }
    acc = {name: linear_eval(train, data.train_labels, test, data.test_labels, epochs=10, num_classes=100)
           for name, (train, test) in features.items()}
    print({name: str(ev) for name, ev in acc.items()})
    for baseline in ("pixels", "random"):
        gap = acc["context"].mean - acc[baseline].mean
        assert gap > 3 * max(acc["context"].std, acc[baseline].std), (baseline, acc)
