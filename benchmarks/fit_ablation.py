"""Fit ablation: which design choice of a RealNVP flow decides its held-out NLL and its spikes.

Every row changes one choice of an 8-coupling, hidden [64, 64] affine flow on standardised 2-D
data (Adam 1e-3, batch 256, 30 epochs, test NLL of the best validation epoch, in data units), and
prints ``mean ± sd (worst)`` over seeds per density plus the largest epoch-to-epoch ratio of the
mean training NLL (``spike``; above 1.5 is a loss spike). ``zuko`` is the PyTorch peer with the
same budget (needs the ``benchmarks`` extra).

Rows:

* ``zero biases``: the conditioners' hidden layers Glorot-initialised with zero biases (the
  Keras default, which tfp-coupling used before).
* ``fan-in``: hidden weights and biases uniform in ``±1/sqrt(fan_in)`` (``tc.nets.MLP`` now).
* ``fan-in, clamp 2``: log-scale soft clamp ``2 tanh(s / 2)`` instead of ``5 tanh(s / 5)``.
* ``fan-in, data->latent``: the affine map in the normalizing direction, as in the RealNVP paper
  (the flow's bijector is ``tfb.Invert`` of the coupling chain).
* ``fan-in, data->latent, sigmoid``: and the scale ``sigmoid(s + 2) + 1e-3`` (nflows, Glow):
  the data->latent map never expands through a coupling.
* ``fan-in, clip 1``: global gradient-norm clipping at 1.

Second ablation: ``default`` is ``tc.realnvp_flow`` as it was (whitened by a data-initialised
``TriLAffine``, clamp ``2 tanh(s / 2)``, unbounded shift, identity start; ``default, shift clamp
5`` is the identity start with today's bound); every other row rebuilds it with one change:

* ``zuko clip 6.9`` / ``zuko clip 3``: zuko's soft clip ``s / (1 + |s| / c)`` instead of tanh.
* ``clamp 3``: ``3 tanh(s / 3)``.
* ``no whiten``: without the ``TriLAffine``.
* ``actnorm``: an ``ActNorm`` (data-initialised) between consecutive couplings.
* ``data->latent``: each coupling's affine map in the normalizing direction, as zuko and the
  RealNVP paper have it: ``z_b = x_b * exp(s(x_a)) + t(x_a)`` on the way from data to latent
  (the shift added after the scale, in latent units), instead of ``x_b = z_b * exp(s) + t``.
* ``random last layer``: the conditioners' output layer initialised like the hidden ones
  (zuko's PyTorch default) instead of zeros.
* ``alternating masks``: ``mask="alternating"`` (the same split for 2-D data).
* ``zuko-like`` (and ``, whiten``): data->latent, zuko clip 6.9, random last layer.
* ``wd 1e-4``, ``wd 1e-3``, ``hidden 32``, ``4 couplings``: regularisation for the tables
  (``--tables``): Keras' decoupled weight decay on the conditioners, hidden [32, 32], 4 couplings.
* ``adam eps 1e-8``: the default flow trained with Adam's epsilon at PyTorch's 1e-8 (Keras'
  default is 1e-7), to separate the training loop from the flow in the comparison with zuko.
* ``relu, then tanh``: the default (shift bounded) with tanh in every conditioner hidden layer
  after the first: ReLU's kinks for sharp 2-D densities, bounded units for small tables?
* ``random shift start``: the default with the shift columns of the conditioners' output
  layers drawn at random (the log-scale columns stay 0): a random start of constant volume.
  ``x0.5`` draws them in half the range; ``tanh, random shift start`` with tanh conditioners.
* ``realnvp_flow``: ``tc.realnvp_flow`` with ReLU units, which starts its shifts random
  itself. ``realnvp_flow, auto`` is it as a user called it before the sine units (units chosen
  by the rows); ``realnvp_flow, half sine`` is ``realnvp_flow``'s default now (the same, with
  sine units in half the first layer of the conditioners that see one coordinate).
* ``realnvp_flow, fade 3`` / ``4``: ``realnvp_flow(fade_outside=B)``, each coupling fading to
  the identity where a kept coordinate leaves ``[-B, B]``; ``table setting`` is the command
  line's table flow (tanh, identity start), ``, fade 3`` the same with the fade.
* ``realnvp_flow, dropout 0.1`` / ``0.3``, ``table setting, dropout 0.3``: dropout at that
  rate after every conditioner hidden layer, in training only (``realnvp_flow(dropout=...)``).
* ``realnvp_flow, sinh-arcsinh`` (and ``table setting, ...``): a learned per-coordinate
  ``y = sinh((asinh(x) + a) * exp(b))`` (Jones and Pewsey's skew and tail weight, ``a = b = 0``
  at the start) between the whitening and the couplings.
* ``nice``, ``nice 8``: ``tc.nice_flow`` with 4 and 8 couplings (its default then; 16 since);
  the runs record the test NLL of the initialised flow as ``start``. ``, zero init`` and
  ``, whiten`` set ``nice_flow``'s ``zero_init`` and ``whiten``; ``nice 16, whiten, sine,
  rotations`` is ``nice_flow``'s default.

Usage::

    python benchmarks/fit_ablation.py                      # 3 seeds, three densities
    python benchmarks/fit_ablation.py --quick              # smoke run
    python benchmarks/fit_ablation.py --datasets rings --seeds 5 --gaussian
        --variants default "data->latent" --results runs.jsonl   # (one line) resumable
    python benchmarks/fit_ablation.py --tables wine --variants default "wd 1e-3" --no-peer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from density_quality import (
    HELD_OUT_TABLES,
    TABLES,
    TOY,
    Budget,
    Cell,
    gaussian_nll,
    max_epoch_ratio,
    max_epoch_rise,
    peer_available,
    table_split,
    toy_split,
    train_ours,
    train_zuko,
)

import tfp_coupling as tc

# Rows of the first ablation (2026-11-26): an unwhitened flow, clamp 5, one change per row.
_OLD = {"whiten": False, "clamp": 5.0}
# Rows of the second: the ``realnvp_flow`` default (whitened, clamp 2), one change per row.
_NEW = {"whiten": True, "clamp": 2.0}

VARIANTS: dict[str, dict] = {
    "zero biases": {**_OLD, "init": "zero_bias"},
    "fan-in": {**_OLD},
    "fan-in, clamp 2": {**_OLD, "clamp": 2.0},
    "fan-in, data->latent": {**_OLD, "normalizing": True},
    "fan-in, data->latent, sigmoid": {**_OLD, "normalizing": True, "sigmoid": True},
    "fan-in, clip 1": {**_OLD, "clip": 1.0},
    # Second ablation: each row is ``tc.realnvp_flow``'s default with one or two changes.
    "default": {"builder": True},
    "zuko clip 6.9": {**_NEW, "clamp": 6.9, "form": "zuko"},
    "zuko clip 3": {**_NEW, "clamp": 3.0, "form": "zuko"},
    "clamp 3": {**_NEW, "clamp": 3.0},
    "no whiten": {**_NEW, "whiten": False},
    "actnorm": {**_NEW, "actnorm": True},
    "data->latent": {**_NEW, "normalizing": True},
    "random last layer": {**_NEW, "zero_out": False},
    "alternating masks": {**_NEW, "mask": "alternating"},
    "zuko-like": {"whiten": False, "clamp": 6.9, "form": "zuko", "normalizing": True,
                  "zero_out": False},
    "zuko-like, whiten": {"whiten": True, "clamp": 6.9, "form": "zuko", "normalizing": True,
                          "zero_out": False},
    "data->latent, zuko clip 6.9": {**_NEW, "clamp": 6.9, "form": "zuko", "normalizing": True},
    "data->latent, clamp 3": {**_NEW, "clamp": 3.0, "normalizing": True},
    "data->latent, random last layer": {**_NEW, "normalizing": True, "zero_out": False},
    # The same with the output layer's random start scaled by 0.1: near the Gaussian fit.
    "data->latent, small random last layer": {**_NEW, "normalizing": True, "zero_out": False,
                                              "out_scale": 0.1},
    # Fixed random reflections between couplings (each coupling's split in new coordinates; an
    # orthogonal map takes N(0, I) to itself, so the whitened start is still the Gaussian fit).
    "rotations": {**_NEW, "normalizing": True, "rotate": True},
    # Learned linear mixing between couplings: L then U (each a TriLAffine, U between two
    # coordinate reversals), set from already whitened data on the first fit: the identity, so
    # the start is still the Gaussian fit.
    "lu mixing": {**_NEW, "normalizing": True, "lu": True},
    # Extrapolation: a shift bounded by 5 tanh(t / 5), or tanh hidden units (s and t level off
    # away from the training rows instead of growing linearly as with ReLU).
    "shift clamp 5": {**_NEW, "normalizing": True, "shift_clamp": 5.0},
    "tanh": {**_NEW, "normalizing": True, "activation": "tanh"},
    # Tables have D > 2, where a fixed half split never mixes coordinates within a half.
    "tanh, lu mixing": {**_NEW, "normalizing": True, "activation": "tanh", "lu": True},
    "tanh, alternating masks": {**_NEW, "normalizing": True, "activation": "tanh",
                                "mask": "alternating"},
    # ReLU conditioners whose input is squashed first, c tanh(x / c): linear near the data,
    # constant far from it, so s and t level off for outlying rows.
    "input squash 4": {**_NEW, "normalizing": True, "squash": 4.0},
    # Table rows (regularisation for small tables).
    "wd 1e-4": {"builder": True, "weight_decay": 1e-4},
    "wd 1e-3": {"builder": True, "weight_decay": 1e-3},
    "hidden 32": {"builder": True, "hidden": (32, 32)},
    "4 couplings": {"builder": True, "couplings": 4},
    # The default after FlowModel.fit began drawing a new batch order every epoch (Keras
    # repeated one order in every epoch of a seeded run): rows of runs made since.
    "default, fresh shuffle": {"builder": True},
    # zuko's flow written with tfp-coupling, rerun since batches are reshuffled every epoch:
    # how much of the gap to zuko is the training loop and how much the flow's choices.
    "zuko-like, fresh shuffle": {"whiten": False, "clamp": 6.9, "form": "zuko",
                                 "normalizing": True, "zero_out": False},
    # The training loop: Adam's epsilon as PyTorch's (the peer's) instead of Keras' 1e-7.
    "adam eps 1e-8": {"builder": True, "epsilon": 1e-8},
    # Smooth, unbounded hidden units: could one activation serve 2-D data and tables?
    "silu": {"builder": True, "activation": "silu"},
    "elu": {"builder": True, "activation": "elu"},
    # realnvp_flow(mixing="lu"): one LULinear (identity start) between every two couplings.
    "mixing lu": {"builder": True, "mixing": "lu"},
    "tanh, mixing lu": {"builder": True, "activation": "tanh", "mixing": "lu"},
    # realnvp_flow(shift_clamp=5): t = 5 tanh(t_raw / 5), latent units (the default since).
    "default, shift clamp 5": {"builder": True, "shift_clamp": 5.0},
    # tanh units whose first layer is drawn k times wider: with one input coordinate (2-D data)
    # the default draw leaves most units near-linear over the data; k spreads their bends.
    "tanh, first layer x2": {"builder": True, "activation": "tanh", "first_scale": 2.0},
    "tanh, first layer x3": {"builder": True, "activation": "tanh", "first_scale": 3.0},
    "tanh, first layer x6": {"builder": True, "activation": "tanh", "first_scale": 6.0},
    # ReLU kinks in the first hidden layer, bounded tanh units in the second: tables or 2-D?
    "relu, then tanh": {"builder": True, "shift_clamp": 5.0, "later_activation": "tanh"},
    # Random start of the shifts only: the log-scales start at 0, so the start keeps the volume.
    "random shift start": {"builder": True, "shift_clamp": 5.0, "random_shift": True},
    "random shift start x0.5": {"builder": True, "shift_clamp": 5.0, "random_shift": 0.5},
    # realnvp_flow's own random shift start (MLP's random_outputs), now its default.
    "realnvp_flow": {"builder": True, "shift_clamp": 5.0, "zero_init": False},
    "tanh, random shift start": {"builder": True, "shift_clamp": 5.0, "activation": "tanh",
                                 "random_shift": True},
    # The default with its log-scale bounded to (-1, 1): an outlying table row's coordinates are
    # stretched by at most e per coupling instead of e^2.
    "realnvp_flow, clamp 1": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                              "log_scale_clamp": 1.0},
    # The default whose couplings fade to the identity where a kept coordinate leaves [-B, B]
    # (whitened units): outlying table rows keep the whitening's Gaussian tail.
    "realnvp_flow, fade 3": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                             "fade_outside": 3.0},
    "realnvp_flow, fade 4": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                             "fade_outside": 4.0},
    # The command line's table setting (tanh, identity start), and it with the fade.
    "table setting": {"builder": True, "shift_clamp": 5.0, "activation": "tanh"},
    "table setting, fade 3": {"builder": True, "shift_clamp": 5.0, "activation": "tanh",
                              "fade_outside": 3.0},
    # Dropout in the conditioners' hidden layers (training only): a regulariser for tables.
    "realnvp_flow, dropout 0.1": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                                  "dropout": 0.1},
    "realnvp_flow, dropout 0.3": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                                  "dropout": 0.3},
    "table setting, dropout 0.3": {"builder": True, "shift_clamp": 5.0, "activation": "tanh",
                                   "dropout": 0.3},
    # NICE (``tc.nice_flow``): its default of then, 4 couplings, against 8.
    # A learned marginal sinh-arcsinh map between the whitening and the couplings (identity
    # start): heavy-tailed whitened columns can be drawn in before the couplings see them.
    "realnvp_flow, sinh-arcsinh": {"builder": True, "shift_clamp": 5.0, "zero_init": False,
                                   "sinh_arcsinh": True},
    "table setting, sinh-arcsinh": {"builder": True, "shift_clamp": 5.0, "activation": "tanh",
                                    "sinh_arcsinh": True},
    # realnvp_flow as a user calls it: units and start chosen by the training rows (tanh at
    # the identity below 2000, else ReLU with the random start: the "realnvp_flow" row).
    "realnvp_flow, auto": {"builder": "auto"},
    "nice": {"builder": "nice", "couplings": 4},
    "nice 8": {"builder": "nice", "couplings": 8},
    "nice 8, zero init": {"builder": "nice", "couplings": 8, "zero_init": True},
    "nice 8, whiten": {"builder": "nice", "couplings": 8, "whiten": True},
    "nice 8, whiten, tanh": {"builder": "nice", "couplings": 8, "whiten": True,
                             "activation": "tanh"},
    "nice 8, whiten, zero init": {"builder": "nice", "couplings": 8, "whiten": True,
                                  "zero_init": True},
    # Symmetric data (rings): NICE leaves the Gaussian only after a long plateau; more and
    # wider couplings, run with a longer --epochs.
    "nice 16x256, whiten": {"builder": "nice", "couplings": 16, "hidden": (256, 256),
                            "whiten": True},
    # Sine units in the conditioners' first layer (Fourier features), drawn 3x wider: on a
    # one-coordinate x_a they represent the high-frequency shears that leave the plateau.
    "nice 8, whiten, sine first x3": {"builder": "nice", "couplings": 8, "whiten": True,
                                      "first_activation": "sin", "first_scale": 3.0},
    # nice_flow's default from the sine units to the rotations (8 couplings, no mixing).
    "nice_flow": {"builder": "nice", "couplings": 8, "whiten": True, "sine_scale": "auto"},
    # Twice the couplings; then learned mixing between them starting at a rotation by 1 radian
    # (nice_flow's default since): shears along other directions than the two axes.
    "nice 16, whiten, sine": {"builder": "nice", "couplings": 16, "whiten": True,
                              "sine_scale": "auto"},
    "nice 16, whiten, sine, rotations": {"builder": "nice", "couplings": 16, "whiten": True,
                                         "sine_scale": "auto", "mixing": "auto"},
    "realnvp_flow, sine first x3": {"builder": "auto", "first_activation": "sin",
                                    "first_scale": 3.0},
    # Sine units in half of every first layer (the first 32 of 64; the layer drawn 2x wider),
    # on conditioners that see one coordinate: realnvp_flow's default (sine_scale="auto").
    "realnvp_flow, half sine": {"builder": "auto", "sine_scale": "auto"},
}


class MarginalSinhArcsinh(tc.FlowBijector):
    """``y = sinh((asinh(x) + a) * exp(b))`` per coordinate, ``a`` and ``b`` learned (Keras
    weights in two ``LogScale`` layers; 0 at the start: the identity).

    log-det: ``sum(b + log cosh((asinh(x) + a) e^b) - log(1 + x^2) / 2)``.
    """

    def __init__(self, dim: int, dtype: str = "float32", name: str = "sinh_arcsinh") -> None:
        self.skew = tc.bijectors.LogScale([dim], dtype=dtype, name=f"{name}_skew")
        self.tail = tc.bijectors.LogScale([dim], dtype=dtype, name=f"{name}_log_tail")
        super().__init__(event_shape=[dim], dtype=dtype, is_constant_jacobian=False,
                         validate_args=False, parameters={"dim": dim, "dtype": dtype,
                                                          "name": name}, name=name)

    @property
    def keras_layers(self) -> list:
        return [self.skew, self.tail]

    def _params(self):
        return (tf.cast(self.skew.log_scale, self._flow_dtype),
                tf.cast(self.tail.log_scale, self._flow_dtype))

    def _forward_and_log_det(self, x):
        a, b = self._params()
        v = (tf.asinh(x) + a) * tf.exp(b)
        log_cosh = tf.abs(v) + tf.math.softplus(-2.0 * tf.abs(v)) - math.log(2.0)
        ldj = tf.reduce_sum(b + log_cosh - 0.5 * tf.math.log1p(tf.square(x)), axis=-1)
        return tf.sinh(v), ldj

    def _inverse_and_log_det(self, y):
        # The forward's log-det at x (the recorded runs used this form; log1p(y^2) / 2 for
        # log cosh(v) is equal in exact arithmetic but changes the trained digits).
        a, b = self._params()
        x = tf.sinh(tf.asinh(y) * tf.exp(-b) - a)
        return x, -self._forward_and_log_det(x)[1]


class SigmoidScaleCoupling(tc.AffineCoupling):
    """Affine coupling with ``exp(s) = sigmoid(s_raw + 2) + 1e-3`` (nflows' and Glow's form)."""

    def _constrain(self, params):
        shift, raw = params
        return [shift, tf.math.log(tf.sigmoid(raw + 2.0) + 1e-3)]


class SquashedInputMLP(tc.nets.MLP):
    """``tc.nets.MLP`` applied to ``c tanh(x / c)`` instead of ``x``."""

    squash = 4.0

    def call(self, inputs):
        return super().call(self.squash * tf.tanh(inputs / self.squash))


class ZukoClipCoupling(tc.AffineCoupling):
    """Affine coupling with zuko's soft clip ``s / (1 + |s| / c)``, ``|s| < c`` (zuko: ln 1e3)."""

    def _constrain(self, params):
        shift, raw = params
        return [shift, raw / (1.0 + tf.abs(raw) * (1.0 / self.log_scale_clamp))]


def normalizing(cls):
    """``cls`` with its affine map in the data -> latent direction (zuko, the RealNVP paper).

    The inverse (data -> latent) is ``z_b = x_b * exp(s) + t`` and the forward its inverse,
    ``x_b = (z_b - t) * exp(-s)``, log-det ``-sum(s)``.
    """

    class Normalizing(cls):
        def _transform(self, x_b, params):
            return super()._inverse_transform(x_b, params)

        def _inverse_transform(self, y_b, params):
            return super()._transform(y_b, params)

        def _log_det(self, x, params):
            return -super()._log_det(x, params)

    Normalizing.__name__ = f"Normalizing{cls.__name__}"
    return Normalizing


def build(variant: dict, dim: int) -> tc.FlowModel:
    couplings, hidden = variant.get("couplings", 8), variant.get("hidden", (64, 64))
    if variant.get("builder") == "auto":
        # Rows without "sine_scale" were recorded before realnvp_flow had sine units.
        model = tc.realnvp_flow([dim], num_couplings=couplings, hidden_units=hidden,
                                sine_scale=variant.get("sine_scale"))
        return _first_activation(variant, _scale_first_layers(variant, model))
    if variant.get("builder") == "nice":
        # Rows without "sine_scale" or "mixing" were recorded before nice_flow had sine units
        # or mixing.
        model = tc.nice_flow([dim], num_couplings=couplings, hidden_units=hidden,
                             zero_init=variant.get("zero_init", False),
                             whiten=variant.get("whiten", False),
                             activation=variant.get("activation", "relu"),
                             sine_scale=variant.get("sine_scale"),
                             mixing=variant.get("mixing"))
        return _first_activation(variant, _scale_first_layers(variant, model))
    if variant.get("builder"):
        # A row without "shift_clamp" builds the unbounded shift it was recorded with (the
        # default before realnvp_flow bounded it), and one without "zero_init" the identity
        # start of then, so that its runs repeat.
        model = tc.realnvp_flow(
            [dim], num_couplings=couplings, hidden_units=hidden,
            activation=variant.get("activation", "relu"), mixing=variant.get("mixing"),
            shift_clamp=variant.get("shift_clamp"), zero_init=variant.get("zero_init", True),
            log_scale_clamp=variant.get("log_scale_clamp", 2.0),
            fade_outside=variant.get("fade_outside"), dropout=variant.get("dropout", 0.0),
            sine_scale=None)
        for adjust in (_scale_first_layers, _first_activation, _later_activation, _random_shift,
                       _sinh_arcsinh):
            model = adjust(variant, model)  # each returns the model unchanged if not asked for
        return model
    if variant.get("sigmoid"):
        cls = SigmoidScaleCoupling
    elif variant.get("form") == "zuko":
        cls = ZukoClipCoupling
    else:
        cls = tc.AffineCoupling
    if variant.get("normalizing"):
        cls = normalizing(cls)
    clamp = None if variant.get("sigmoid") else variant.get("clamp", 5.0)
    steps = [tc.TriLAffine(dim)] if variant.get("whiten") else []
    for i, m in enumerate(tc.mask_sequence([dim], couplings, variant.get("mask"))):
        if variant.get("actnorm") and i > 0:
            steps.append(tc.ActNorm([dim], name=f"actnorm_{i}"))
        if variant.get("lu") and i > 0:
            reverse = tfp.bijectors.Permute(list(range(dim))[::-1])
            steps += [tc.TriLAffine(dim, name=f"mix_l_{i}"), reverse,
                      tc.TriLAffine(dim, name=f"mix_u_{i}"), reverse]
        if variant.get("rotate") and i > 0:
            # A random Householder reflection: orthogonal, log-det 0 known (XLA-compilable).
            v = np.random.default_rng(int(keras.random.randint((), 0, 2**30))).normal(size=dim)
            steps.append(tfp.bijectors.ScaleMatvecLinearOperator(
                tf.linalg.LinearOperatorHouseholder(tf.constant(v, tf.float32))))
        b = tc.masks.Partition(m).b_shape[-1]
        net = (SquashedInputMLP if "squash" in variant else tc.nets.MLP)(
            hidden, [2 * b], zero_init=variant.get("zero_out", True),
            activation=variant.get("activation", "relu"))
        if "squash" in variant:
            net.squash = variant["squash"]
        steps.append(cls(m, net, log_scale_clamp=clamp, shift_clamp=variant.get("shift_clamp")))
    model = tc.FlowModel(tc.Chain(steps), [dim])
    if "out_scale" in variant:
        for layer in model.flow_layers:
            if isinstance(layer, tc.nets.MLP):
                for w in layer.out.weights:
                    w.assign(w * variant["out_scale"])
    if variant.get("init") == "zero_bias":
        rng = np.random.default_rng(int(keras.random.randint((), 0, 2**30)))
        for layer in model.flow_layers:
            for dense in getattr(layer, "hidden", []):
                fan_in, fan_out = dense.kernel.shape
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                dense.kernel.assign(rng.uniform(-limit, limit, dense.kernel.shape))
                dense.bias.assign(np.zeros(dense.bias.shape))
    return model


def _scale_first_layers(variant: dict, model: tc.FlowModel) -> tc.FlowModel:
    """Multiplies every conditioner's first-layer weights and biases by ``first_scale``."""
    if "first_scale" not in variant:
        return model
    for layer in model.flow_layers:
        if isinstance(layer, tc.nets.MLP):
            assert layer.hidden[0].weights, "the conditioners are built with the flow"
            for w in layer.hidden[0].weights:
                w.assign(w * variant["first_scale"])
    return model


def _first_activation(variant: dict, model: tc.FlowModel) -> tc.FlowModel:
    """``first_activation="sin"``: every conditioner's first hidden layer computes sine units,
    as an ``MLP(sine_scale=first_scale)`` does (``_scale_first_layers`` drew the weights;
    set before any call is traced, so the sine units are the ones trained)."""
    if "first_activation" not in variant:
        return model
    assert variant["first_activation"] == "sin", variant
    for layer in model.flow_layers:
        if isinstance(layer, tc.nets.MLP):
            layer.sine_scale = variant.get("first_scale", 1.0)
            layer.hidden[0].activation = keras.activations.get("linear")
    return model


def _later_activation(variant: dict, model: tc.FlowModel) -> tc.FlowModel:
    """Sets every conditioner's hidden layers after the first to ``later_activation`` (before
    any call is traced, so the new activation is the one trained)."""
    if "later_activation" not in variant:
        return model
    for layer in model.flow_layers:
        if isinstance(layer, tc.nets.MLP):
            for dense in layer.hidden[1:]:
                dense.activation = keras.activations.get(variant["later_activation"])
    return model


def _random_shift(variant: dict, model: tc.FlowModel) -> tc.FlowModel:
    """Draws the shift columns of every conditioner's output layer (the first half) uniform in
    ``±f/sqrt(fan_in)`` (``f`` the row's ``random_shift``, True for 1: the hidden layers'
    range); the log-scale columns stay 0. NumPy's generator, as the recorded runs had it:
    ``realnvp_flow``'s own draw (``MLP``'s ``random_outputs``) uses Keras'."""
    if not variant.get("random_shift"):
        return model
    rng = np.random.default_rng(int(keras.random.randint((), 0, 2**30)))
    for layer in model.flow_layers:
        if isinstance(layer, tc.nets.MLP):
            kernel, bias = layer.out.kernel, layer.out.bias
            fan_in, width = kernel.shape
            b, limit = width // 2, float(variant["random_shift"]) / np.sqrt(fan_in)
            k, c = kernel.numpy(), bias.numpy()
            k[:, :b] = rng.uniform(-limit, limit, (fan_in, b))
            c[:b] = rng.uniform(-limit, limit, b)
            kernel.assign(k)
            bias.assign(c)
    return model


def _sinh_arcsinh(variant: dict, model: tc.FlowModel) -> tc.FlowModel:
    """The same flow with a :class:`MarginalSinhArcsinh` after its whitening (data end)."""
    if not variant.get("sinh_arcsinh"):
        return model
    whitening, *couplings = model.bijector.bijectors
    dim = model.event_shape[0]
    return tc.FlowModel(tc.Chain([whitening, MarginalSinhArcsinh(dim), *couplings]), [dim])


def _load(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def table(records: list[dict], rows: list[str], datasets: list[str]) -> str:
    """Markdown table ``mean ± sd (worst)`` per row and dataset, from result records."""
    cells = {(r, d): Cell() for r in rows for d in datasets}
    seeds = set()
    for rec in records:
        key = (rec["variant"], rec["data"])
        if key in cells:
            cells[key].add(rec["nll"], rec["history"])
            seeds.add(rec["seed"])
    lines = ["| variant | " + " | ".join(datasets) + " | spike | rise (nats) |",
             "| --- |" + " --- |" * (len(datasets) + 2)]
    for r in rows:
        spike = max(cells[r, d].spike for d in datasets)
        rise = max(cells[r, d].rise for d in datasets)
        lines.append(f"| {r} | " + " | ".join(cells[r, d].text() for d in datasets)
                     + f" | {spike:.2f} | {rise:.2f} |")
    return "\n".join(lines)


def label(name: str, rows: int | None) -> str:
    """The data column of a run: the density's name, with its rows per split if not default."""
    return name if rows is None else f"{name}, {rows} rows"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", choices=TOY,
                        default=["two_moons", "eight_gaussians", "circles"])
    parser.add_argument("--tables", nargs="*", default=[],
                        choices=TABLES + tuple(HELD_OUT_TABLES),
                        help="tables instead of 2-D data (Adam 1e-4, batch 64, 300 epochs)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        default=[v for v in VARIANTS if list(VARIANTS).index(v) < 6
                                 and "sigmoid" not in v])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 30 for 2-D data, 300 for tables")
    parser.add_argument("--no-peer", action="store_true", help="skip the zuko row")
    parser.add_argument("--gaussian", action="store_true", help="add the Gaussian row")
    parser.add_argument("--results", help="JSON-lines file: append every run; runs already "
                        "in it (same row, data, seed, epochs) are reused, not repeated")
    parser.add_argument("--report", action="store_true",
                        help="print the table of the runs in --results only, train nothing")
    parser.add_argument("--rows", type=int, default=None,
                        help="2-D data: rows per split (default 8,000 / 2,000 / 2,000; below 2,000 "
                        "the tables' budget); runs are recorded as '<density>, <rows> rows'")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 seed")
    args = parser.parse_args(argv)
    n = args.rows
    names = args.tables or args.datasets
    kind = "table" if args.tables else "toy"
    # A few hundred rows get the tables' budget, whatever they are.
    small = bool(args.tables) or (n is not None and n < 2000)
    if args.epochs is None:
        args.epochs = 300 if small else 30
    if args.quick:
        args.seeds, args.epochs, n = 1, 2, 512
        names = names[:1]
    budget = Budget(args.epochs, 64, 1e-4) if small else Budget(args.epochs, 256, 1e-3)
    labelled_rows = n if kind == "toy" and not args.quick else None
    peer = peer_available() and not args.no_peer
    if peer:
        import torch

        torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared machine
    rows = (["gaussian"] if args.gaussian else []) + list(args.variants) + (
        ["zuko"] if peer else [])
    records = _load(args.results)
    if not args.report:
        done = {(r["variant"], r["data"], r["seed"], r["epochs"]) for r in records}
        for name in names:
            d = label(name, labelled_rows)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                split = toy_split(name, seed, n) if kind == "toy" else table_split(name, seed)
                for r in rows:
                    if (r, d, seed, args.epochs) in done:
                        continue  # resume: a run already in --results is not repeated
                    start, info = time.perf_counter(), {}
                    if r == "gaussian":
                        nll, hist = gaussian_nll(split), []
                    elif r == "zuko":
                        nll, hist = train_zuko(split, budget, seed)
                    else:
                        v = VARIANTS[r]
                        nll, hist = train_ours(lambda dim, v=v: build(v, dim), split, budget,
                                               seed, clipnorm=v.get("clip"),
                                               weight_decay=v.get("weight_decay"),
                                               epsilon=v.get("epsilon", 1e-7),
                                               info=info)
                    rec = {"variant": r, "data": d, "seed": seed, "epochs": args.epochs,
                           "nll": nll, "history": hist, **info}
                    records.append(rec)
                    if args.results and not args.quick:
                        with open(args.results, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    begin = f" (start {info['start']:.3f})" if "start" in info else ""
                    print(f"{d} seed {seed} {r}: {nll:.3f}{begin}, spike "
                          f"{max_epoch_ratio(hist):.2f} (rise {max_epoch_rise(hist):.2f} "
                          f"nats), {time.perf_counter() - start:.0f} s", flush=True)
    names = [label(name, labelled_rows) for name in names]
    records = [r for r in records if r["epochs"] == args.epochs and r["data"] in names
               and args.first_seed <= r["seed"] < args.first_seed + args.seeds]
    print(f"\nTest NLL (nats), mean ± sd (worst) over seeds {args.first_seed}.."
          f"{args.first_seed + args.seeds - 1}, {args.epochs} epochs; spike = max epoch ratio "
          f"over all runs of the row; rise = the largest epoch-to-epoch rise of the mean "
          f"training NLL, nats\n")
    print(table(records, rows, names))


if __name__ == "__main__":
    main()
