"""``rldjax_jpeg_images``: an offline TFDS dataset of JPEG photos' stand-ins.

A prepared TFDS dataset laid out as ImageNet's is (JPEG-encoded images of
varying sizes, integer labels), built without a download, so that the
streaming path for prepared datasets (``rldjax.data.input_pipeline``: TFDS
even splits, files reshuffled per epoch, JPEG decoding on the host) can be
tested and timed where ImageNet cannot be downloaded. Nothing in it can be
learnt beyond chance: each image is a smooth random field (a random 6×8
colour grid upsampled bilinearly, plus Gaussian pixel noise, which sets the
JPEG size), and labels are uniform. Everything is a function of the
example index (``numpy.random.default_rng(index)``).

Configs (``rldjax_jpeg_images/<config>``):

* ``small``: 48 training and 12 test images of 40–72 × 40–72 pixels,
  4 classes (the tests).
* ``imagenet_like``: 2048 training and 256 test images of 300–500 ×
  300–500 pixels, JPEG quality 90, ~85 KB each (ImageNet's training images
  average ~110 KB at about 400 × 350), 1000 classes
  (``benchmarks/input_pipeline.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass
class JpegImagesConfig(tfds.core.BuilderConfig):
  train: int = 0
  test: int = 0
  sides: tuple = (0, 0)
  num_classes: int = 0
  noise: float = 6.0
  quality: int = 90


def example(index: int, sides: tuple, num_classes: int, noise: float, quality: int) -> dict:
  """Example ``index``: {"image": JPEG bytes, "label": int}."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(index)
  h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
  grid = rng.uniform(0.0, 255.0, (6, 8, 3)).astype(np.float32)
  field = tf.image.resize(grid, (h, w), method="bilinear").numpy()
  image = np.clip(field + rng.normal(0.0, noise, field.shape), 0, 255).astype(np.uint8)
  return {"image": tf.io.encode_jpeg(image, quality=quality).numpy(),
          "label": int(rng.integers(num_classes))}


class RldjaxJpegImages(tfds.core.GeneratorBasedBuilder):
  """Random smooth JPEG images, prepared offline (a stand-in for ImageNet's layout)."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  OFFLINE = True  # rldjax may prepare it without asking: no download.
  BUILDER_CONFIGS = [
      JpegImagesConfig(name="small", train=48, test=12, sides=(40, 72), num_classes=4),
      JpegImagesConfig(name="imagenet_like", train=2048, test=256, sides=(300, 500),
                       num_classes=1000, noise=20.0),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {"train": self._generate_examples(range(c.train)),
            "test": self._generate_examples(range(c.train, c.train + c.test))}

  def _generate_examples(self, indices):
    c = self.builder_config
    for i in indices:
      yield i, example(i, c.sides, c.num_classes, c.noise, c.quality)
