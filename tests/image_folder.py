"""Writes small image folders (``ROOT/<split>/<label>/<i>.png``, the layout
``tfds.ImageFolder`` reads) for the streaming-path tests."""
import numpy as np


def write_image_folder(root, counts, labels=("cat", "dog"), shape=(40, 48, 3),
                       separable=False):
  """``counts``: ``(split, images per label)`` pairs. Random pixels; with
  ``separable``, label k's channel k is brighter by 55 (something to learn)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for split, count in counts:
    for k, label in enumerate(labels):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 200 if separable else 255, shape, dtype=np.uint8)
        if separable:
          image[..., k] += 55
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
  return root
