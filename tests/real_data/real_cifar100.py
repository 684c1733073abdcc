"""Where the tests find the real CIFAR-100: a verified, non-official copy beside the repository.

The machines this project is built and tested on cannot download CIFAR-100; a copy rebuilt offline
(all 60 000 images with their exact pixels, the official split and training order; its gzip and
pickle bytes, hence its md5, differ from the official file) sits in `../shared/data/cifar100/`
beside the checkout, or where $VWE_TEST_CIFAR100_DIR points. Its md5 is named here, as a user names
the md5 of their own verified copy: the loader refuses it otherwise.
"""

import os
from pathlib import Path

import pytest

from vwe.data import CIFAR100_ARCHIVE

VERIFIED_MD5 = "a30677b741c5a4007e94555541ecf782"
FOLDER = Path(os.environ.get("VWE_TEST_CIFAR100_DIR")
              or Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar100")
ARCHIVE = FOLDER / CIFAR100_ARCHIVE



def skip_without_real_cifar100() -> None:
    """Skip the calling test module, in one line that says why, where the archive is absent."""
    if not ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-100 not found at {ARCHIVE} (set VWE_TEST_CIFAR100_DIR): real-data "
                    "tests skipped", allow_module_level=True)
