"""Shared pytest setup: quiet TensorFlow logs, seed every test. Nothing heavy at import."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seeds Python, numpy, TensorFlow and Keras (``keras.utils.set_random_seed``) per test."""
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def rng():
    """A seeded numpy generator for test data."""
    import numpy as np

    return np.random.default_rng(0)
