"""Published augmentation and normalisation as JAX functions, run on device
inside the jitted train step (datasets held in memory).

* ``cifar``: torchvision's ``RandomCrop(32, padding=4)`` (zero padding, offsets
  uniform in 0..8) and ``RandomHorizontalFlip()``, then ``Normalize`` with the
  published CIFAR-100 mean/std.
* ``digits``: no augmentation; grey 8×8 images repeated to RGB, normalised
  with mean 0.5 and std 0.5.

Each example's random choices come from its own key
(:func:`rldjax.data.order.example_keys`): a function of (seed, epoch, example
index) only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
KINDS = ("cifar", "digits")
UNAUGMENTED = ("digits",)  # kinds whose training transform draws no random numbers


def normalize(images_uint8, mean, std):
  """uint8 [..., C] -> float32 ((x / 255) - mean) / std; one channel is repeated to RGB."""
  x = images_uint8.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(images, keys, padding: int = 4):
  """Per example: a random ``H × W`` crop of the zero-padded image, then a
  horizontal flip with probability 1/2. ``images`` [N, H, W, C], ``keys`` [N]."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(image, key):
    k_crop, k_flip = jax.random.split(key)
    top, left = jax.random.randint(k_crop, (2,), 0, 2 * padding + 1)
    crop = jax.lax.dynamic_slice(image, (top, left, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)
  return jax.vmap(one)(padded, keys)


def train_images(images_uint8, keys, kind: str):
  """Augmented, normalised float32 training images of ``kind``."""
  if kind == "cifar":
    return normalize(random_crop_flip(images_uint8, keys), CIFAR_MEAN, CIFAR_STD)
  if kind == "digits":
    return normalize(images_uint8, DIGITS_MEAN, DIGITS_STD)
  raise ValueError(f"no on-device augmentation for dataset kind {kind!r}; one of {KINDS}")


def eval_images(images_uint8, kind: str):
  """Normalised float32 evaluation images of ``kind`` (no augmentation)."""
  mean, std = {"cifar": (CIFAR_MEAN, CIFAR_STD), "digits": (DIGITS_MEAN, DIGITS_STD)}[kind]
  return normalize(images_uint8, mean, std)
