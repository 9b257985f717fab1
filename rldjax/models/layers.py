"""Layers that behave like the published PyTorch ones.

* :class:`TorchBatchNorm`: eps 1e-5, momentum 0.1, normalisation with the biased
  two-pass batch variance, running variance updated with the *unbiased* one.
* :class:`Net`: a small helper that creates flat-named leaf layers (named by
  their PyTorch ``state_dict`` prefix, e.g. ``"layer1.0.conv1"``) with explicit
  symmetric padding and PyTorch's initialisers, so that a model reads like its
  PyTorch forward pass and converts to and from a ``state_dict`` by name.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rldjax.models import batch_norm
from rldjax.models import conv as conv_lib
from rldjax.models.stored import stored

Dtype = Any

# Initialisers (ARCHITECTURES.md §2.5).
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Callable:
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class TorchBatchNorm(nn.Module):
  """Batch norm over the last axis with PyTorch's semantics (ARCHITECTURES.md §2.1).

  Training mode normalises with the biased batch variance and updates
  running_mean <- 0.9 running_mean + 0.1 mean and running_var <- 0.9 running_var
  + 0.1 unbiased_var. Statistics and normalisation are computed in float32 (or
  float64 for float64 inputs) whatever ``dtype`` is, with shifted moments and a
  closed-form derivative (:mod:`rldjax.models.batch_norm`), so that float32
  forward and backward stay close to float64. Calling the same instance twice
  in one training pass updates the running statistics twice, as the published
  code does. With ``axis_name`` (inside a ``shard_map``), the batch statistics
  are those of the global batch (synchronised batch norm), so a sharded step
  equals a single-device one.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: str | None = None  # synchronise batch statistics over this mesh axis

  @nn.compact
  def __call__(self, x, train: bool):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    xc = x.astype(compute)
    if train:
      y, mean, var = batch_norm.batch_norm_train(xc, scale.astype(compute), bias.astype(compute),
                                                 self.epsilon, self.axis_name)
      if not self.is_initializing():
        n = batch_norm.count(xc, self.axis_name)
        mean, var = jax.lax.stop_gradient((mean, var))
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = ((1 - self.momentum) * ra_mean.value
                         + self.momentum * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1 - self.momentum) * ra_var.value
                        + self.momentum * unbiased).astype(ra_var.value.dtype)
    else:
      y = (xc - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


class Net:
  """Creates and reuses named leaf layers inside one ``nn.compact`` call.

  Names are PyTorch ``state_dict`` prefixes. Asking for the same name twice
  returns the same layer instance (used for the WRN quirk).
  """

  def __init__(self, train: bool, dtype: Dtype, conv_init: Callable = he_normal_fan_out,
               bn_axis_name: str | None = None):
    self.train = train
    self.dtype = dtype
    self.bn_axis_name = bn_axis_name
    self.conv_init = conv_init
    self._layers: dict[str, nn.Module] = {}

  def _get(self, name, factory):
    if name not in self._layers:
      self._layers[name] = factory()
    return self._layers[name]

  def conv(self, name, x, features, kernel, stride=1, padding=0, groups=1, bias=False):
    layer = self._get(name, lambda: nn.Conv(
        features, (kernel, kernel), strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), feature_group_count=groups,
        use_bias=bias, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=self.conv_init, bias_init=nn.initializers.zeros, name=name,
        conv_general_dilated=conv_lib.conv_general_dilated))
    return layer(x)

  def bn(self, name, x, relu=False):
    layer = self._get(name, lambda: TorchBatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name,
                                                   name=name))
    y = layer(x, self.train)
    return nn.relu(y) if relu else y

  def dense(self, name, x, features, kernel_init=torch_default_kernel, bias_init=None):
    if bias_init is None:
      bias_init = torch_default_bias(x.shape[-1])
    layer = self._get(name, lambda: nn.Dense(
        features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
        bias_init=bias_init, name=name))
    return layer(x)


def residual_stream(x, store: bool = True):
  """A residual block's output ``x``, unchanged. With ``store``, on CPU ``x``
  is kept as a buffer of its own (:func:`rldjax.models.stored.stored`):
  XLA:CPU otherwise leaves the residual stream unmaterialised and recomputes
  the chain of earlier blocks' sums (their batch norms included) inside each
  consumer. Whether storing pays depends on the network and the pass (a
  training pass saves the stream for its backward anyway, and the stored copy
  then only adds work), so each model passes what was measured
  (BENCHMARKS.md, "The residual stream"): ResNets in inference only, WRNs in
  training only (and only with stages of more than two blocks), ShuffleV1
  always."""
  return stored(x) if store else x


def global_avg_pool(x):
  """Spatial mean; every zoo head's pool covers the whole final map at the
  stated input size (ARCHITECTURES.md §2.4)."""
  return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x, groups: int):
  """ARCHITECTURES.md §2.3, NHWC: split channels (g, C/g), swap, merge."""
  if groups == 1:
    return x
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)


class ZooModel(nn.Module):
  """Base of every zoo model: ``apply(variables, images_nhwc, train=...)`` returns
  logits; ``features=True`` returns ``(logits, {"pooled": penultimate})``."""
  num_classes: int = 100
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None  # set by the trainer: synchronised batch norm

  def net(self, train: bool, **kwargs) -> Net:
    return Net(train, self.dtype, bn_axis_name=self.bn_axis_name, **kwargs)

  def images(self, x):
    """``x`` in the compute dtype, after checking that it is a float NHWC batch.

    Integer images (raw uint8 pixels) are refused rather than computed on as
    0-255 values: the published models take normalised float images.
    """
    if not hasattr(x, "ndim") or x.ndim != 4:
      raise ValueError(f"images must be a batch [N, H, W, C] (NHWC), got shape "
                       f"{getattr(x, 'shape', type(x).__name__)}; add a batch axis to one image")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"images must be floating point, normalised as the data pipeline does "
                      f"(rldjax.data), got dtype {x.dtype}")
    return x.astype(self.dtype)

  def head(self, net: Net, name: str, pooled, features: bool, **dense_kwargs):
    out = jnp.promote_types(self.dtype, jnp.float32)  # float32, or float64 for a float64 model
    logits = net.dense(name, pooled, self.num_classes, **dense_kwargs).astype(out)
    if features:
      return logits, {"pooled": pooled.astype(out)}
    return logits
