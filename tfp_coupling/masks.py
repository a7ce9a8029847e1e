"""Coupling masks and the split/merge they define.

A mask is a boolean array over the event shape. ``True`` marks the *kept* part ``x_a``: it passes
through a coupling unchanged and is the conditioner's input. ``False`` marks the *transformed* part
``x_b``. Every mask function returns a ``tf.bool`` tensor; ``complement`` flips it, so that
alternating a mask with its complement transforms every dimension.

Example:
    >>> from tfp_coupling import masks
    >>> masks.half_mask(5).numpy().astype(int).tolist()
    [1, 1, 0, 0, 0]
    >>> masks.alternating_mask(4, parity=1).numpy().astype(int).tolist()
    [0, 1, 0, 1]
    >>> masks.checkerboard_mask(2, 2).numpy()[..., 0].astype(int).tolist()
    [[1, 0], [0, 1]]

:class:`Partition` turns a mask into the split and merge that every coupling uses. Where the
mask varies only along the last axis (vectors, channel-wise image masks) the split takes the kept
and transformed entries apart (slices when they are contiguous, a gather otherwise) so the
conditioner sees only ``x_a``. Where it varies over space (checkerboard), the split is by
masking (``Partition.splits_by_masking``) as in the RealNVP paper: the conditioner sees
``x * mask`` and its parameters are zeroed on the kept entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "Partition",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "complement",
    "half_mask",
]


def half_mask(size: int, first: bool = True) -> tf.Tensor:
    """Keeps the first ``size // 2`` entries (or the last ``size - size // 2`` if ``first=False``).

    NICE's and RealNVP's split of a vector into two halves; its complement keeps the other half.
    """
    _check_size(size, "size")
    mask = np.arange(size) < size // 2
    return tf.constant(mask if first else ~mask)


def alternating_mask(size: int, parity: int = 0) -> tf.Tensor:
    """Keeps the entries whose index has the given parity (0: even, 1: odd)."""
    _check_size(size, "size")
    _check_parity(parity)
    return tf.constant(np.arange(size) % 2 == parity)


def checkerboard_mask(height: int, width: int, channels: int = 1, parity: int = 0) -> tf.Tensor:
    """RealNVP's spatial checkerboard over an ``(height, width, channels)`` image.

    Keeps pixel ``(i, j)`` (every channel) where ``(i + j) % 2 == parity``.
    """
    for value, name in ((height, "height"), (width, "width")):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if int(channels) < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if height * width < 2:
        raise ValueError(f"a checkerboard needs at least 2 pixels, got {height}x{width}")
    _check_parity(parity)
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    board = (i + j) % 2 == parity
    return tf.constant(np.repeat(board[:, :, None], channels, axis=2))


def channel_mask(height: int, width: int, channels: int, first: bool = True) -> tf.Tensor:
    """RealNVP's channel-wise mask: keeps the first half of the channels (or the second half)."""
    for value, name in ((height, "height"), (width, "width")):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    _check_size(channels, "channels")
    keep = np.arange(channels) < channels // 2
    if not first:
        keep = ~keep
    return tf.constant(np.broadcast_to(keep, (height, width, channels)).copy())


def complement(mask: tf.Tensor) -> tf.Tensor:
    """The mask that keeps exactly what ``mask`` transforms."""
    return tf.logical_not(tf.cast(mask, tf.bool))


class Partition:
    """The split of an event into kept ``x_a`` and transformed ``x_b`` that a mask defines.

    Written once, used by every coupling in both directions:

    * ``split(x) -> (x_a, x_b)`` and ``merge(x_a, y_b) -> y`` with ``merge(*split(x)) == x``;
    * ``mask_params(p)`` zeroes conditioner outputs on kept entries (``splits_by_masking`` only);
    * ``a_shape`` / ``b_shape``: event shapes of the conditioner's input and of each parameter.

    Example:
        >>> import tensorflow as tf
        >>> p = Partition(half_mask(4))
        >>> x_a, x_b = p.split(tf.constant([[1.0, 2.0, 3.0, 4.0]]))
        >>> x_a.numpy().tolist(), x_b.numpy().tolist()
        ([[1.0, 2.0]], [[3.0, 4.0]])
        >>> p.merge(x_a, x_b).numpy().tolist()
        [[1.0, 2.0, 3.0, 4.0]]
    """

    def __init__(self, mask: tf.Tensor | np.ndarray | Sequence) -> None:
        keep = np.asarray(tf.get_static_value(tf.convert_to_tensor(mask)))
        if keep.ndim == 0:
            raise ValueError("mask must have at least one dimension (the event shape), "
                             "got a scalar")
        keep = keep.astype(bool)
        if keep.all() or not keep.any():
            raise ValueError(
                f"mask must keep some entries and transform others; got {int(keep.sum())} kept "
                f"of {keep.size}"
            )
        self.keep = keep
        self.event_shape = tuple(keep.shape)
        rows = keep.reshape(-1, keep.shape[-1])
        # A mask that is the same at every position but the last axis splits by index; one that
        # varies over space keeps the event's shape: x_a = x * mask, and x_b is the whole x.
        self.splits_by_masking = not bool((rows == rows[0]).all())
        if self.splits_by_masking:
            self.a_shape = self.event_shape
            self.b_shape = self.event_shape
            return
        last = rows[0]
        self._idx_a = np.flatnonzero(last)
        self._idx_b = np.flatnonzero(~last)
        n_a, n_b = len(self._idx_a), len(self._idx_b)
        self.a_shape = (*self.event_shape[:-1], n_a)
        self.b_shape = (*self.event_shape[:-1], n_b)
        order = np.concatenate([self._idx_a, self._idx_b])
        # Contiguous blocks split with slices; anything else with one gather each way.
        if np.array_equal(order, np.arange(n_a + n_b)):
            self._layout = "kept_first"
        elif np.array_equal(np.concatenate([self._idx_b, self._idx_a]), np.arange(n_a + n_b)):
            self._layout = "kept_last"
        else:
            self._layout = "gather"
            self._merge_order = np.argsort(order)

    def split(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns ``(x_a, x_b)``: the conditioner's input and the part to transform."""
        if self.splits_by_masking:
            return x * tf.cast(self.keep, x.dtype), x
        # One Split op, not two strided slices: its gradient is one concat, where each slice's
        # gradient would be a zero-padded full-size tensor, summed afterwards.
        n_a, n_b = len(self._idx_a), len(self._idx_b)
        if self._layout == "kept_first":
            x_a, x_b = tf.split(x, [n_a, n_b], axis=-1)
            return x_a, x_b
        if self._layout == "kept_last":
            x_b, x_a = tf.split(x, [n_b, n_a], axis=-1)
            return x_a, x_b
        return tf.gather(x, self._idx_a, axis=-1), tf.gather(x, self._idx_b, axis=-1)

    def merge(self, x_a: tf.Tensor, y_b: tf.Tensor) -> tf.Tensor:
        """Inverse of :meth:`split`, with ``y_b`` in place of ``x_b``."""
        if self.splits_by_masking:
            return y_b  # parameters are zero on kept entries, so y_b equals x there
        if self._layout == "kept_first":
            return tf.concat([x_a, y_b], axis=-1)
        if self._layout == "kept_last":
            return tf.concat([y_b, x_a], axis=-1)
        return tf.gather(tf.concat([x_a, y_b], axis=-1), self._merge_order, axis=-1)

    def swaps_halves_with(self, other: Partition) -> bool:
        """Whether ``other`` keeps exactly the entries this partition transforms, and vice versa.

        Then the halves ``(x_a, y_b)`` a coupling on this partition outputs are, in order,
        ``other``'s ``(x_b, x_a)``: chained couplings can pass the halves on and skip the
        merge-then-split between them (see ``composition.fused``). Index splits only.
        """
        return (not self.splits_by_masking and not other.splits_by_masking
                and self.event_shape == other.event_shape
                and np.array_equal(self._idx_a, other._idx_b)
                and np.array_equal(self._idx_b, other._idx_a))

    def mask_params(self, param: tf.Tensor) -> tf.Tensor:
        """Zeroes a transform parameter on kept entries (``splits_by_masking`` only)."""
        if not self.splits_by_masking:
            return param
        return param * tf.cast(~self.keep, param.dtype)


def _check_size(size: int, name: str) -> None:
    if int(size) < 2:
        raise ValueError(f"{name} must be >= 2 to split into two non-empty parts, got {size}")


def _check_parity(parity: int) -> None:
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity}")
