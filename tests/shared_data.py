"""Where the tests find the real MNIST test set (``../shared/data/mnist`` beside the repository).

CI places ``shared/`` beside the clone. Elsewhere, point ``TFP_COUPLING_TEST_MNIST`` at a folder
holding ``t10k-images-idx3-ubyte.gz``; without the files, every MNIST test skips with the same
reason (and says where it looked).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MNIST_DIR = Path(os.environ.get(
    "TFP_COUPLING_TEST_MNIST",
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist",
))
MNIST_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"

needs_mnist = pytest.mark.skipif(
    not MNIST_IMAGES.is_file(),
    reason=f"MNIST test set not found at {MNIST_IMAGES} (set TFP_COUPLING_TEST_MNIST)",
)
