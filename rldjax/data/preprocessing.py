"""ImageNet augmentation and normalisation as deterministic TF ops (the
streaming path; datasets held in memory are augmented on device by
``rldjax.data.augment``).

Every random op is stateless and seeded by (run seed, epoch, example index),
so an epoch's batches are a pure function of those: a resumed run sees exactly
the batches an uninterrupted one would.
"""
from __future__ import annotations

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image, mean, std):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_resized_crop(image, seed, size: int = 224, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)):
  """ImageNet: random resized crop (area ``scale``, aspect ``ratio``), resized
  with antialiased bilinear interpolation as torchvision's
  ``RandomResizedCrop``, then a horizontal flip with probability 1/2."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([1, 0, 4], tf.float32), seed=seeds[0],
      area_range=scale, aspect_ratio_range=ratio, max_attempts=10,
      use_image_if_no_bounding_boxes=True, min_object_covered=0.0)
  image = tf.slice(image, begin, crop_size)
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return tf.image.stateless_random_flip_left_right(image, seeds[1])


def resize_center_crop(image, size: int = 224, resize: int = 256):
  """ImageNet evaluation as torchvision's ``Resize(resize)`` + ``CenterCrop(size)``:
  the shorter side to ``resize`` and the longer to ``int(resize · long / short)``
  (antialiased bilinear), then a centre crop whose offsets are rounded half to
  even, as ``int(round((h - size) / 2))`` does."""
  shape = tf.shape(image)[:2]
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(tf.cast(resize, tf.float64) * tf.cast(long, tf.float64)
                     / tf.cast(short, tf.float64), tf.int32)
  new = tf.where(h <= w, tf.stack([resize, new_long]), tf.stack([new_long, resize]))
  image = tf.image.resize(image, new, method="bilinear", antialias=True)
  top = tf.cast(tf.round(tf.cast(new[0] - size, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new[1] - size, tf.float64) / 2.0), tf.int32)
  return image[top:top + size, left:left + size]


def make_preprocess(train: bool, image_size: int):
  """ImageNet-style preprocessing (the streaming path): (image uint8 [H, W, C],
  seed [2]) -> float32 normalised [S, S, 3]. Training: random resized crop +
  flip; evaluation: resize the shorter side to 256/224·S, centre crop S."""
  def fn(image, seed):
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    image = random_resized_crop(image, seed, image_size) if train else \
        resize_center_crop(image, image_size, int(round(image_size * 256 / 224)))
    image = tf.clip_by_value(image, 0.0, 255.0)
    return normalize(image, IMAGENET_MEAN, IMAGENET_STD)
  return fn
