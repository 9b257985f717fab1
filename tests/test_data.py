"""The in-memory data path: the training order, the on-device augmentation
against a NumPy reference, process-count invariance, the host-fed path's
batches, the array cache (damaged caches, damaged prepared files), label
checks; the streaming path: image files that do not decode, and a prepared
dataset (rldjax_jpeg_images, laid out as ImageNet) read in per-process shares,
decoded after the shuffle buffer, and resumed mid-epoch without decoding what
it skips."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import errors
from rldjax.data import augment, builders, in_memory, order
from rldjax.train import data as data_lib
from tests.image_folder import write_image_folder
from tests.side_by_side import run_in_threads


def test_epoch_order_visits_every_example_once_and_changes_per_epoch():
  key = order.data_key_data(7)
  a = np.asarray(order.epoch_permutation(key, 0, 1000))
  b = np.asarray(order.epoch_permutation(key, 1, 1000))
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, np.asarray(order.epoch_permutation(key, 0, 1000)))
  other_seed = np.asarray(order.epoch_permutation(order.data_key_data(8), 0, 1000))
  assert not np.array_equal(a, other_seed)
  # Under jit, on the device, the same numbers (threefry is backend-independent).
  jitted = jax.jit(order.epoch_permutation, static_argnums=2)(key, 0, 1000)
  np.testing.assert_array_equal(a, np.asarray(jitted))


def test_batch_rows_do_not_depend_on_how_the_batch_is_split():
  perm = order.epoch_permutation(order.data_key_data(0), 3, 100)
  whole = np.asarray(order.batch_indices(perm, 2, 16, 0, 16))
  for parts in (2, 4, 8):
    rows = parts and 16 // parts
    pieces = [np.asarray(order.batch_indices(perm, 2, 16, p * rows, rows)) for p in range(parts)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
  np.testing.assert_array_equal(whole, np.asarray(perm)[32:48])


def numpy_crop_flip(image, key, padding=4):
  """Reference: the same random draws, applied with NumPy indexing."""
  k_crop, k_flip = jax.random.split(key)
  top, left = (int(v) for v in jax.random.randint(k_crop, (2,), 0, 2 * padding + 1))
  flip = bool(jax.random.bernoulli(k_flip))
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  crop = padded[top:top + h, left:left + w]
  return (crop[:, ::-1] if flip else crop), (top, left, flip)


def test_cifar_augmentation_matches_numpy_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  indices = jnp.arange(64) * 37
  keys = order.example_keys(order.data_key_data(1), 5, indices)
  train_images = jax.jit(augment.train_images, static_argnums=2)
  got = np.asarray(train_images(images, keys, "cifar"))
  draws = []
  for i in range(64):
    ref, draw = numpy_crop_flip(images[i], keys[i])
    draws.append(draw)
    expected = (ref / 255.0 - np.asarray(augment.CIFAR_MEAN)) / np.asarray(augment.CIFAR_STD)
    np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)
  tops, lefts, flips = zip(*draws)
  assert set(tops) <= set(range(9)) and len(set(tops)) > 5 and len(set(lefts)) > 5
  assert 16 < sum(flips) < 48  # flips with probability 1/2
  # An example's draws depend on its index and epoch, not on its position.
  again = train_images(images[::-1], keys[::-1], "cifar")
  np.testing.assert_array_equal(np.asarray(again), got[::-1])


def test_digits_are_normalised_without_augmentation():
  images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
  keys = order.example_keys(order.data_key_data(0), 0, jnp.arange(2))
  out = np.asarray(augment.train_images(images, keys, "digits"))
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(out[..., 1], (images[..., 0] / 255.0 - 0.5) / 0.5, rtol=1e-6)
  np.testing.assert_array_equal(out, np.asarray(augment.eval_images(images, "digits")))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  return builders.load_builder("rldjax_digits", str(path))


def test_split_is_read_once_then_cached(digits, monkeypatch):
  images, labels = in_memory.load_split(digits, "test")
  assert images.shape == (359, 8, 8, 1) and images.dtype == np.uint8
  # The fixed split is stratified: each class's share of the test split is
  # within one image of its share of the 1797 digits.
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  every = np.bincount(load_digits().target)
  assert np.all(np.abs(np.bincount(labels, minlength=10) - every * 359 / 1797) < 1)
  monkeypatch.setattr(in_memory, "_read_tfds", lambda *a: pytest.fail("cache not used"))
  cached_images, cached_labels = in_memory.load_split(digits, "test")
  np.testing.assert_array_equal(cached_images, images)
  np.testing.assert_array_equal(cached_labels, labels)
  # Split slices (the validation split) are cached separately.
  monkeypatch.undo()
  head, _ = in_memory.load_split(digits, "train[:80%]")
  assert len(head) == 1150


def test_a_cache_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch):
  """A full disk while caching: the split is still returned, no cache and no
  partial copy are left (CIFAR-100's is 150 MB)."""
  import errno  # pylint: disable=import-outside-toplevel
  builder = builders.load_builder("rldjax_digits", str(tmp_path))

  def full_disk(path, **arrays):
    with open(path, "wb") as f:
      f.write(b"PK partial")
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(in_memory.np, "savez", full_disk)
  images, labels = in_memory.load_split(builder, "test")
  assert images.shape == (359, 8, 8, 1) and labels.shape == (359,)
  cache_dir = os.path.dirname(in_memory._cache_path(builder, "test"))  # pylint: disable=protected-access
  assert os.listdir(cache_dir) == []


def _flip_byte(path, fraction=0.5):
  data = bytearray(open(path, "rb").read())
  data[int(len(data) * fraction)] ^= 0x01
  open(path, "wb").write(bytes(data))


def test_a_damaged_array_cache_is_read_again_and_damaged_prepared_files_are_named(
    tmp_path, caplog):
  builder = builders.load_builder("rldjax_digits", str(tmp_path))
  images, labels = in_memory.load_split(builder, "train")
  cache = in_memory._cache_path(builder, "train")  # pylint: disable=protected-access
  original = open(cache, "rb").read()
  # One flipped bit in the cached images (np.load raised zipfile.BadZipFile,
  # a traceback), then a truncated cache: each is read again from TFDS and
  # cached again.
  for damage in (_flip_byte, lambda path: open(path, "r+b").truncate(1000)):
    damage(cache)
    again_images, again_labels = in_memory.load_split(builder, "train")
    np.testing.assert_array_equal(again_images, images)
    np.testing.assert_array_equal(again_labels, labels)
    assert "ignoring unreadable array cache" in caplog.text
    assert open(cache, "rb").read() == original
    caplog.clear()
  # One flipped bit in the prepared TFRecord file: a DataError naming the
  # dataset, split and directory, not TensorFlow's DataLossError traceback.
  os.remove(cache)
  (record,) = [n for n in os.listdir(builder.data_dir) if "train.tfrecord" in n]
  _flip_byte(os.path.join(builder.data_dir, record))
  with pytest.raises(errors.DataError, match=(
      r"^dataset 'rldjax_digits' split 'train': an example cannot be read or decoded \(corrupted "
      rf"record at \d+\)\. Its prepared files in {re.escape(str(builder.data_dir))} may be damaged")):
    in_memory.load_split(builder, "train")


def test_an_image_file_that_does_not_decode_is_named(tmp_path):
  from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  write_image_folder(tmp_path, (("train", 3),), labels=("a", "b"), shape=(12, 10, 3))
  builder = builders.load_builder(f"image_folder:{tmp_path}")
  assert input_pipeline.undecodable_images(builder, "train") == ([], 6, True)
  victim = tmp_path / "train" / "b" / "1.png"
  victim.write_bytes(victim.read_bytes()[:40])
  assert input_pipeline.undecodable_images(builder, "train") == ([str(victim)], 6, True)
  assert input_pipeline.undecodable_images(builder, "train", budget_s=-1.0) == ([], 0, False)
  with pytest.raises(errors.DataError, match=(
      r"^dataset 'image_folder' split 'train': 1 image file\(s\) cannot be decoded \(Invalid PNG"
      rf"[^)]*\): {re.escape(str(victim))}\. Replace them")):
    list(input_pipeline.train_batches(builder, "train", global_batch=2, epoch=0, seed=0,
                                      image_size=8, shuffle_buffer=6))
  with pytest.raises(errors.DataError, match=re.escape(str(victim))):
    list(input_pipeline.eval_batches(builder, "train", global_batch=2, image_size=8))


def test_an_image_folder_is_read_in_tfds_slices_and_identified_by_its_listing(tmp_path):
  """tfds.ImageFolder reads whole splits only (``train[:90%]`` raised
  ValueError from tf.data): the streaming path reads its slices itself, the
  same examples as the whole split read by TFDS, in the same order; a split's
  listing (recorded in inputs.json) names its files and labels, not where the
  folder is or what the files hold."""
  import shutil  # pylint: disable=import-outside-toplevel
  from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  root = write_image_folder(tmp_path / "imgs", (("train", 4), ("test", 2)), shape=(6, 5, 3))
  builder = builders.load_builder(f"image_folder:{root}")

  def read(dataset):
    return [(ex["image/filename"].decode(), int(ex["label"]), ex["image"].tobytes())
            for ex in dataset.as_numpy_iterator()]
  train, test = (read(input_pipeline.image_folder_dataset(builder, s)) for s in ("train", "test"))
  assert train == read(builder.as_dataset(split="train", shuffle_files=False))
  classes = sorted(os.path.basename(os.path.dirname(f)) for f, _, _ in train)
  assert classes == ["cat"] * 4 + ["dog"] * 4
  assert {(os.path.basename(os.path.dirname(f)), label) for f, label, _ in train + test} == {
      ("cat", 0), ("dog", 1)}
  for split, expected in (("train[:50%]", train[:4]),
                          ("train[75%:]+test[-1:]", train[6:] + test[-1:])):
    assert read(input_pipeline.image_folder_dataset(builder, split)) == expected
    assert builders.num_examples(builder, split) == len(expected)
  undecoded = list(input_pipeline.image_folder_dataset(builder, "test", decode=False))
  assert [bytes(ex["image"].numpy()) for ex in undecoded] == [
      open(f, "rb").read() for f, _, _ in test]

  listing = builders.split_listing(builder, "train")
  assert listing != builders.split_listing(builder, "train[:50%]")
  shutil.copytree(root, tmp_path / "moved")  # another process's copy, elsewhere
  assert builders.split_listing(builders.load_builder(f"image_folder:{tmp_path / 'moved'}"),
                                "train") == listing
  shutil.copy(root / "train" / "dog" / "0.png", root / "train" / "cat" / "0.png")  # content only
  assert builders.split_listing(builders.load_builder(f"image_folder:{root}"), "train") == listing
  os.rename(root / "train" / "cat" / "3.png", root / "train" / "dog" / "9.png")  # relabelled
  assert builders.split_listing(builders.load_builder(f"image_folder:{root}"), "train") != listing


def test_a_prepared_dataset_listing_names_its_slices_wherever_it_is(tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  builder = builders.load_builder("rldjax_digits", str(tmp_path / "a"))
  listing = builders.split_listing(builder, "train")
  assert len({listing, builders.split_listing(builder, "train[:80%]"),
              builders.split_listing(builder, "train[80%:]"),
              builders.split_listing(builder, "test")}) == 4
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  assert builders.split_listing(builders.load_builder("rldjax_digits", str(tmp_path / "b")),
                                "train") == listing


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
  """rldjax_jpeg_images/small: 48 training and 12 test JPEGs of 40-72 pixels."""
  return builders.load_builder("rldjax_jpeg_images/small", str(tmp_path_factory.mktemp("jpegs")))


def test_the_jpeg_dataset_is_built_offline_as_documented(jpegs):
  from rldjax.data import jpeg_images  # pylint: disable=import-outside-toplevel
  assert {s: jpegs.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": 48, "test": 12}
  examples = list(jpegs.as_dataset(split="test", shuffle_files=False).as_numpy_iterator())
  for ex in examples:
    h, w, c = ex["image"].shape
    assert 40 <= h <= 72 and 40 <= w <= 72 and c == 3 and 0 <= ex["label"] < 4
  undecoded = jpegs.as_dataset(split="test", shuffle_files=False,
                               decoders={"image": tfds_skip_decoding()})
  stored = sorted(bytes(ex["image"]) for ex in undecoded.as_numpy_iterator())
  made = sorted(jpeg_images.example(i, (40, 72), 4, 6.0, 90)["image"] for i in range(48, 60))
  assert stored == made  # the JPEG bytes the docstring's recipe makes, stored as they are


def tfds_skip_decoding():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.decode.SkipDecoding()


def test_images_left_encoded_decode_to_the_pixels_tfds_gives(jpegs):
  from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  encoded = input_pipeline._process_dataset(jpegs, "test", drop_remainder=False, decode=False)
  decoded = [input_pipeline.decode_image(jpegs, ex["image"]).numpy() for ex in encoded]
  plain = [ex["image"] for ex in
           jpegs.as_dataset(split="test", shuffle_files=False).as_numpy_iterator()]
  assert len(decoded) == len(plain) == 12
  for a, b in zip(decoded, plain):
    np.testing.assert_array_equal(a, b)


def test_a_resumed_epoch_is_the_rest_of_the_epoch_and_decodes_only_it(jpegs, monkeypatch):
  """train_batches(start_step=k) gives the epoch's batches k.. exactly, and the
  k skipped batches' images are never decoded (they are skipped while still
  encoded, after the shuffle buffer); every image that is decoded is counted."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  decoded = []
  real = input_pipeline.decode_image

  def counted(builder, encoded):
    passed = tf.py_function(lambda e: (decoded.append(1), e)[1], [encoded], tf.string)
    return real(builder, tf.ensure_shape(passed, []))
  monkeypatch.setattr(input_pipeline, "decode_image", counted)

  def epoch(e, start_step=0, seed=3):
    return list(input_pipeline.train_batches(jpegs, "train", global_batch=4, epoch=e, seed=seed,
                                             image_size=16, start_step=start_step,
                                             shuffle_buffer=20))
  full = epoch(1)
  assert len(full) == 12 and len(decoded) == 48
  for a, b in zip(full, epoch(1)):  # a pure function of (seed, epoch, step)
    np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(np.concatenate([b["image"] for b in full]),
                            np.concatenate([b["image"] for b in epoch(2)]))
  del decoded[:]
  resumed = epoch(1, start_step=9)
  assert len(decoded) == 3 * 4
  assert len(resumed) == 3
  for a, b in zip(resumed, full[9:]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_each_process_reads_its_own_share_of_a_prepared_dataset(jpegs, monkeypatch):
  """Training: equal, disjoint shares (TFDS even splits), files shuffled per
  epoch; evaluation: every example counted once over the processes."""
  from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel

  def as_process(index, count=2):
    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(jax, "process_index", lambda: index)

  def train_share(index, file_seed=5):
    as_process(index)
    ds = input_pipeline._process_dataset(jpegs, "train", drop_remainder=True,
                                         file_seed=file_seed, decode=False)
    return [bytes(ex["image"]) for ex in ds.as_numpy_iterator()]
  shares = [train_share(0), train_share(1)]
  assert [len(s) for s in shares] == [24, 24] and not set(shares[0]) & set(shares[1])
  assert sorted(shares[0]) == sorted(train_share(0, file_seed=6))

  def evaluated(index, count):
    as_process(index, count)
    batches = list(input_pipeline.eval_batches(jpegs, "test", global_batch=4, image_size=16))
    return len(batches), [img.tobytes() for b in batches
                          for img, m in zip(b["image"], b["mask"]) if m]
  steps_one, whole = evaluated(0, 1)
  (steps_a, part_a), (steps_b, part_b) = evaluated(0, 2), evaluated(1, 2)
  assert steps_one == 3 and steps_a == steps_b == 3  # 6 examples each, 2 per local batch
  assert len(whole) == 12 and sorted(part_a + part_b) == sorted(whole)


def test_runs_starting_together_prepare_the_dataset_once(tmp_path, monkeypatch):
  """Runs sharing a data dir (the demo's threads, separate launches) that all
  find the offline dataset unprepared: one prepares it, the others wait for
  it; then they all read and cache the same split at once."""
  import threading
  prepared, original = [], builders._prepare  # pylint: disable=protected-access

  def counting(builder, download):
    prepared.append(builder.name)
    original(builder, download)
  monkeypatch.setattr(builders, "_prepare", counting)
  start, out = threading.Barrier(4), {}

  def load(i):
    start.wait()
    builder = builders.load_builder("rldjax_digits", str(tmp_path))
    start.wait()
    out[i] = in_memory.load_split(builder, "test")
  failures = run_in_threads(load, 4, on_failure=start.abort)  # the others stop waiting
  assert not failures, failures
  assert prepared == ["rldjax_digits"]
  for images, labels in out.values():
    np.testing.assert_array_equal(images, out[0][0])
    np.testing.assert_array_equal(labels, out[0][1])
  arrays = tmp_path / "rldjax_digits" / "1.0.0" / "rldjax_arrays"
  assert sorted(p.name for p in arrays.iterdir()) == ["test.npz"]  # no temporary file left


def test_labels_out_of_range_name_dataset_split_and_value():
  with pytest.raises(errors.DataError, match=r"'digits' split 'train': label 10 of example 2"):
    in_memory.check_labels(np.array([0, 9, 10, -1]), 10, "digits", "train")
  with pytest.raises(errors.DataError, match="label -1"):
    data_lib.check_batch_labels(np.array([3, -1]), 10, "imagenet2012", "validation")


def test_host_batches_equal_the_device_order(digits):
  """The host-fed path gathers exactly the rows the device path indexes."""
  import types
  images, labels = in_memory.load_split(digits, "train")
  data = types.SimpleNamespace(train=(images, labels.astype(np.int32)), steps_per_epoch=22)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  key = order.data_key_data(3)
  batches = list(data_lib.host_train_batches(data, mesh, 64, key, 2, start_step=20))
  assert len(batches) == 2
  perm = np.asarray(order.epoch_permutation(key, 2, len(labels)))
  np.testing.assert_array_equal(batches[1]["index"], perm[21 * 64:22 * 64])
  np.testing.assert_array_equal(batches[1]["image"], images[perm[21 * 64:22 * 64]])


def test_host_eval_batches_count_every_example_once(digits):
  import types
  images, labels = in_memory.load_split(digits, "test")
  data = types.SimpleNamespace(eval=(images, labels.astype(np.int32)))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  batches = list(data_lib.host_eval_batches(data, mesh, 100))
  assert [len(b["label"]) for b in batches] == [100, 100, 100, 59]  # one device: no padding
  assert sum(b["mask"].sum() for b in batches) == 359
  seen = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(seen, labels)


def test_eval_batch_sizes_cover_the_split_once():
  assert order.eval_batch_sizes(359, 512, 1) == [359]
  assert order.eval_batch_sizes(359, 512, 8) == [360]
  assert order.eval_batch_sizes(10000, 512, 8) == [512] * 19 + [272]
  assert order.eval_batch_sizes(1024, 512, 8) == [512, 512]
  for n, b, d in [(37, 16, 8), (5, 16, 8), (1, 8, 2), (333, 64, 4)]:
    sizes = order.eval_batch_sizes(n, b, d)
    assert all(s % d == 0 and 0 < s <= b for s in sizes)
    assert sum(sizes[:-1]) < n <= sum(sizes) < n + d  # padding: fewer rows than devices
