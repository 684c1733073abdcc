"""The paper's central claim, checked on Shapes at a size that fits `make test` (about a minute).

Claim: pretraining the context autoencoder gives features that a linear probe classifies far better
than the same ResNet-32 tower with random weights (paper Table 1: 34.08 vs 7.65 % on CIFAR-100).

Size: 2000 train / 1000 test Shapes images, 3 epochs of the `cpu` profile's recipe at batch 64
(3 x 31 Adam steps), probe 30 epochs x seeds 0, 1, 2, standardised features (the default probe),
against [24]'s random baseline (an untrained ResNet-32 on the whole image). The two rows are the
table's (`vwe.table`: "context-resnet32-aug" and "random-resnet32"), computed as `run_row` computes
their headline number, without the columns the claim does not read (the tower's and the raw probes,
the author's evaluation, kNN), which tests/test_table.py checks. Measured on the 2-core CPU, one torch
thread (context AE vs random weights, top-1 %, mean ± std over the probe seeds), for the data seed
the test uses and two others:
  data seed   3 epochs (the test)                  4 epochs (the test before)
  0           23.03 ± 1.10 vs 15.93 ± 0.32 (6.4 x)   22.20 ± 0.26 vs 15.93 ± 0.32 (19.5 x)
  1           22.77 ± 1.52 vs 14.50 ± 0.36 (5.4 x)   23.63 ± 1.53 vs 14.50 ± 0.36 (6.0 x)
  2           23.13 ± 1.17 vs 15.13 ± 0.68 (6.9 x)   23.60 ± 0.20 vs 15.13 ± 0.68 (12.4 x)
(in brackets: the gap in units of the larger std; the test asks for more than 3, and for the context
AE above 20 %). The test uses seed 0. The other claims (augmentation helps, ResNet-32 beats Conv4,
the simple AE in between) need the full claims table (README, "Results"): at this size their gaps are
within noise.
"""

import pytest
from entry import pretrain

from vwe.config import get_config
from vwe.data import make_shapes
from vwe.evaluate import evaluate_model, extract_features, linear_eval, probe_settings, random_image_model
from vwe.table import ROWS, row_config

BY_KEY = {r.key: r for r in ROWS}


@pytest.mark.slow
def test_context_autoencoder_beats_random_weights(tmp_path):
    cfg = get_config("cpu", dataset="shapes", device="cpu", n_train=2000, n_test=1000, epochs=3,
                     batch_size=64, eval_batch_size=256)
    data = make_shapes(2000, 1000, seed=0)
    # [24]'s random row: an untrained ResNet-32 on the whole image (vwe.table.run_row, kind random-image)
    tower = random_image_model(BY_KEY["random-resnet32"].tower, cfg.seed).forward_features
    train, test = (extract_features(tower, x, cfg.eval_batch_size) for x in (data.train_images,
                                                                             data.test_images))
    random = linear_eval(train, data.train_labels, test, data.test_labels,
                         **probe_settings(cfg, data.num_classes))
    # the context AE's row: its pretraining run, then the probe on its 8192-d context embedding
    context_cfg = row_config(cfg, BY_KEY["context-resnet32-aug"])
    model = pretrain(context_cfg, tmp_path / "context", data=data, progress=False).model
    context = evaluate_model(model, data, context_cfg, progress=False)
    spread = max(context.std, random.std)  # the probe seeds' sample std, the larger of the two
    assert context.mean - random.mean > 3 * spread, (
        f"context AE {context.mean:.2f} ± {context.std:.2f} % vs random weights "
        f"{random.mean:.2f} ± {random.std:.2f} %: gap below 3 x {spread:.2f}"
    )
    # Chance is 10 % (10 balanced classes): the random tower stays near it, the context AE does not.
    assert random.mean < 20 < context.mean
