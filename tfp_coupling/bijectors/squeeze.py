"""RealNVP's squeeze: space-to-depth by a factor of 2 on ``(H, W, C)`` images."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfp_coupling.bijectors.base import FlowBijector

__all__ = ["Squeeze"]


class Squeeze(FlowBijector):
    """Space-to-depth: each 2x2 block of pixels becomes one pixel with 4x the channels.

    Maths (``f = factor``, ``0 <= a, b < f``)::

        y[i, j, (a * f + b) * C + c] = x[f * i + a, f * j + b, c]
        (H, W, C) -> (H / f, W / f, f * f * C)
        log|det J| = 0          (a permutation of the entries)

    The inverse is depth-to-space. This is the squeezing operation of the RealNVP paper
    (section 3.6): it trades spatial size for channels so that channel-wise masks can follow.
    The event shape changes, so ``event_shape`` is the input ``(H, W, C)`` and
    ``output_event_shape`` the output ``(H / f, W / f, f * f * C)``; TFP's
    ``forward_event_shape``/``inverse_event_shape`` report them. Wrap it in ``tfb.Invert`` for
    depth-to-space as the forward direction (``composition.fused`` walks through ``Invert``).

    Args:
        event_shape: input image shape ``(H, W, C)``; ``H`` and ``W`` divisible by ``factor``.
        factor: block size ``f`` (2 in the paper).
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import tensorflow as tf
        >>> from tfp_coupling.bijectors import Squeeze
        >>> b = Squeeze([4, 4, 1])
        >>> x = tf.reshape(tf.range(16.0), [1, 4, 4, 1])
        >>> y = b.forward(x)
        >>> y.shape, y[0, 0, 0].numpy().tolist()
        (TensorShape([1, 2, 2, 4]), [0.0, 1.0, 4.0, 5.0])
        >>> bool(tf.reduce_all(b.inverse(y) == x))
        True

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        factor: int = 2,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "squeeze",
    ) -> None:
        parameters = dict(locals())
        shape = [int(d) for d in event_shape]
        if len(shape) != 3:
            raise ValueError(f"Squeeze needs an image event shape (H, W, C), got {shape}")
        if int(factor) < 2:
            raise ValueError(f"factor must be >= 2, got {factor}")
        h, w, c = shape
        f = int(factor)
        if h % f or w % f or min(h, w, c) < 1:
            raise ValueError(f"height and width must be positive multiples of factor {f}, "
                             f"got event shape {shape}")
        self.factor = f
        super().__init__(
            event_shape=shape, dtype=dtype, is_constant_jacobian=True,
            validate_args=validate_args, parameters=parameters, name=name,
            output_event_shape=(h // f, w // f, f * f * c),
        )

    def _zeros(self, x: tf.Tensor) -> tf.Tensor:
        return tf.zeros(tf.shape(x)[:-3], dtype=x.dtype)

    def _forward_and_log_det(self, x):
        h, w, c = self._event_shape
        f = self.factor
        batch = tf.shape(x)[:-3]
        t = tf.reshape(x, tf.concat([[-1], [h // f, f, w // f, f, c]], axis=0))
        t = tf.transpose(t, [0, 1, 3, 2, 4, 5])  # [N, H/f, W/f, a, b, C]
        y = tf.reshape(t, tf.concat([batch, self._output_event_shape], axis=0))
        return y, self._zeros(x)

    def _inverse_and_log_det(self, y):
        h, w, c = self._event_shape
        f = self.factor
        batch = tf.shape(y)[:-3]
        t = tf.reshape(y, tf.concat([[-1], [h // f, w // f, f, f, c]], axis=0))
        t = tf.transpose(t, [0, 1, 3, 2, 4, 5])  # [N, H/f, a, W/f, b, C]
        x = tf.reshape(t, tf.concat([batch, self._event_shape], axis=0))
        return x, self._zeros(y)

    def _forward_log_det_jacobian(self, x):
        return self._zeros(self._check_input(x, "x"))

    def _inverse_log_det_jacobian(self, y):
        return self._zeros(self._check_input(y, "y"))
