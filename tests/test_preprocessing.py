"""ImageNet preprocessing as torchvision's: antialiased resizes, evaluation
Resize(256) + CenterCrop(224) geometry, and per-epoch file shuffling."""
import numpy as np
import tensorflow as tf

from rldjax.data import preprocessing


def test_eval_resize_shorter_side_then_center_crop():
  rng = np.random.default_rng(0)
  for h, w, new, top, left in ((300, 400, (256, 341), 16, 58),   # 117 / 2 = 58.5 -> 58
                               (400, 301, (340, 256), 58, 16),   # int(256·400/301) = 340
                               (256, 375, (256, 375), 16, 76)):  # 151 / 2 = 75.5 -> 76 (half to even)
    image = tf.constant(rng.integers(0, 255, (h, w, 3)).astype(np.float32))
    got = preprocessing.resize_center_crop(image, 224, 256)
    resized = tf.image.resize(image, new, method="bilinear", antialias=True)
    np.testing.assert_array_equal(got.numpy(), resized[top:top + 224, left:left + 224].numpy())


def test_downscaling_is_antialiased():
  # A 1-pixel checkerboard averages to grey when antialiased; without
  # antialiasing bilinear sampling would alias to near black/white.
  board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.float32)[..., None]
  out = preprocessing.resize_center_crop(tf.constant(np.repeat(board, 3, -1)), 224, 256).numpy()
  assert np.abs(out - 127.5).max() < 10
  crop = preprocessing.random_resized_crop(tf.constant(np.repeat(board, 3, -1)),
                                           tf.constant([1, 2], tf.int64), 32).numpy()
  assert np.abs(crop - 127.5).max() < 40
