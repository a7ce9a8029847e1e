"""Masks, their complements, and the split/merge (``Partition``) every coupling uses."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfp_coupling import masks
from tfp_coupling.masks import Partition

HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def _np(m) -> np.ndarray:
    return np.asarray(m.numpy() if isinstance(m, tf.Tensor) else m)


# ---------------------------------------------------------------------------------------------
# Each mask and its complement


@pytest.mark.parametrize("size", [2, 3, 4, 5, 64])
def test_half_mask_keeps_the_first_half_and_complement_the_rest(size):
    m = masks.half_mask(size)
    assert m.dtype == tf.bool and m.shape == (size,)
    expected = np.array([i < size // 2 for i in range(size)])
    np.testing.assert_array_equal(_np(m), expected)
    np.testing.assert_array_equal(_np(masks.complement(m)), ~expected)
    np.testing.assert_array_equal(_np(masks.half_mask(size, first=False)), ~expected)


@pytest.mark.parametrize("size", [2, 5, 8])
@pytest.mark.parametrize("parity", [0, 1])
def test_alternating_mask_keeps_one_parity_and_complement_the_other(size, parity):
    m = _np(masks.alternating_mask(size, parity))
    np.testing.assert_array_equal(m, np.arange(size) % 2 == parity)
    np.testing.assert_array_equal(_np(masks.complement(masks.alternating_mask(size, parity))),
                                  _np(masks.alternating_mask(size, 1 - parity)))


@pytest.mark.parametrize(("h", "w", "c"), [(2, 2, 1), (4, 4, 2), (3, 5, 3), (1, 2, 1)])
@pytest.mark.parametrize("parity", [0, 1])
def test_checkerboard_mask_alternates_over_pixels_for_every_channel(h, w, c, parity):
    m = _np(masks.checkerboard_mask(h, w, c, parity))
    assert m.shape == (h, w, c) and m.dtype == bool
    for i in range(h):
        for j in range(w):
            assert (m[i, j] == ((i + j) % 2 == parity)).all(), (i, j)
    np.testing.assert_array_equal(_np(masks.complement(m)),
                                  _np(masks.checkerboard_mask(h, w, c, 1 - parity)))


@pytest.mark.parametrize(("h", "w", "c"), [(2, 2, 2), (4, 4, 2), (3, 2, 5)])
def test_channel_mask_keeps_the_first_half_of_channels_everywhere(h, w, c):
    m = _np(masks.channel_mask(h, w, c))
    assert m.shape == (h, w, c)
    expected = np.arange(c) < c // 2
    for i in range(h):
        for j in range(w):
            np.testing.assert_array_equal(m[i, j], expected)
    np.testing.assert_array_equal(_np(masks.channel_mask(h, w, c, first=False)), ~m)
    np.testing.assert_array_equal(_np(masks.complement(m)), ~m)


def test_complement_accepts_0_1_arrays_and_is_an_involution():
    m = np.array([1, 0, 0, 1])
    np.testing.assert_array_equal(_np(masks.complement(m)), [False, True, True, False])
    np.testing.assert_array_equal(_np(masks.complement(masks.complement(m))), m.astype(bool))


# ---------------------------------------------------------------------------------------------
# Partition: split / merge


def _cases():
    return {
        "half": masks.half_mask(5),  # contiguous: kept part first
        "half_complement": masks.complement(masks.half_mask(5)),  # contiguous: kept part last
        "alternating": masks.alternating_mask(6, 1),  # gather
        "channel": masks.channel_mask(3, 4, 4),
        "channel_complement": masks.complement(masks.channel_mask(3, 4, 3)),
        "checkerboard": masks.checkerboard_mask(4, 4, 2),
    }


@pytest.mark.parametrize("kind", list(_cases()))
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_partition_split_merge_round_trip(kind, batch, rng):
    mask = _cases()[kind]
    keep = _np(mask).astype(bool)
    p = Partition(mask)
    x = tf.constant(rng.normal(size=(*batch, *keep.shape)))
    x_a, x_b = p.split(x)
    np.testing.assert_array_equal(p.merge(x_a, x_b).numpy(), x.numpy())
    assert tuple(x_a.shape) == (*batch, *p.a_shape)
    assert tuple(x_b.shape) == (*batch, *p.b_shape)
    xv = x.numpy()
    if p.splits_by_masking:
        # The conditioner sees the whole event with the transformed part zeroed.
        np.testing.assert_array_equal(x_a.numpy(), xv * keep)
        np.testing.assert_array_equal(x_b.numpy(), xv)
        ones = tf.ones((*batch, *keep.shape), tf.float64)
        np.testing.assert_array_equal(p.mask_params(ones).numpy(),
                                      np.broadcast_to(~keep, ones.shape).astype(float))
    else:
        last = keep.reshape(-1, keep.shape[-1])[0]
        np.testing.assert_array_equal(x_a.numpy(), xv[..., last])
        np.testing.assert_array_equal(x_b.numpy(), xv[..., ~last])
        # A changed x_b lands exactly on the transformed entries.
        y = p.merge(x_a, x_b + 1.0).numpy()
        np.testing.assert_array_equal(y[..., last], xv[..., last])
        np.testing.assert_array_equal(y[..., ~last], xv[..., ~last] + 1.0)


def test_partition_kinds():
    assert not Partition(masks.half_mask(4)).splits_by_masking
    assert not Partition(masks.channel_mask(2, 2, 2)).splits_by_masking
    assert Partition(masks.checkerboard_mask(2, 2, 2)).splits_by_masking
    p = Partition(masks.alternating_mask(5, 0))
    assert p.a_shape == (3,) and p.b_shape == (2,)
    p = Partition(masks.channel_mask(4, 4, 3))
    assert p.a_shape == (4, 4, 1) and p.b_shape == (4, 4, 2)
    p = Partition(masks.checkerboard_mask(4, 4, 3))
    assert p.a_shape == p.b_shape == (4, 4, 3)


@HYPOTHESIS
@given(keep=st.lists(st.booleans(), min_size=2, max_size=9).filter(
    lambda k: any(k) and not all(k)))
def test_partition_round_trip_for_any_vector_mask(keep):
    p = Partition(np.array(keep))
    x = tf.reshape(tf.range(2 * len(keep), dtype=tf.float32), (2, len(keep)))
    x_a, x_b = p.split(x)
    np.testing.assert_array_equal(x_a.numpy(), x.numpy()[:, np.array(keep)])
    np.testing.assert_array_equal(p.merge(x_a, x_b).numpy(), x.numpy())


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: masks.half_mask(1), "size must be >= 2"),
        (lambda: masks.half_mask(0), "size must be >= 2"),
        (lambda: masks.alternating_mask(1), "size must be >= 2"),
        (lambda: masks.alternating_mask(4, parity=2), "parity must be 0 or 1"),
        (lambda: masks.checkerboard_mask(4, 4, 1, parity=-1), "parity must be 0 or 1"),
        (lambda: masks.checkerboard_mask(0, 4), "height must be >= 1"),
        (lambda: masks.checkerboard_mask(4, 0), "width must be >= 1"),
        (lambda: masks.checkerboard_mask(1, 1), "at least 2 pixels"),
        (lambda: masks.checkerboard_mask(2, 2, 0), "channels must be >= 1"),
        (lambda: masks.channel_mask(4, 4, 1), "channels must be >= 2"),
        (lambda: masks.channel_mask(0, 4, 2), "height must be >= 1"),
        (lambda: masks.channel_mask(4, 0, 2), "width must be >= 1"),
        (lambda: Partition(np.array(True)), "at least one dimension"),
        (lambda: Partition(np.ones(4, bool)), "keep some entries and transform others"),
        (lambda: Partition(np.zeros((2, 2, 2), bool)), "keep some entries"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
