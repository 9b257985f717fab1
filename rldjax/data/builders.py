"""Finding (and, for offline datasets, preparing) TFDS datasets, without
importing TensorFlow unless a dataset has to be prepared.

In a multi-process run only process 0 prepares; the others wait at a barrier
and then open the prepared dataset (:func:`load_builder`). Runs that share a
data directory (separate launches, or the demo's runs side by side in
threads) prepare a dataset once: preparing holds an exclusive lock file in the
data directory, and whoever waited for it finds the dataset prepared.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import zlib

from absl import logging

from rldjax import distributed
from rldjax.errors import DataError, DatasetNotFoundError, RunError

IMAGE_FOLDER_PREFIX = "image_folder:"


def _missing(name: str, data_dir: str | None) -> DatasetNotFoundError:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return DatasetNotFoundError(
      f"TFDS dataset {name!r} is not prepared in {where}. Provide it with one of: "
      f"--config.dataset.data_dir=DIR (or TFDS_DATA_DIR=DIR) pointing at a directory where "
      f"`tfds build {name}` has been run; for datasets that need a manual download "
      f"(imagenet2012) put the archives in DIR/downloads/manual and run `tfds build "
      f"{name} --data_dir=DIR`; or set --config.dataset.download=True on a machine with network.")


def _open(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # Registers the builders shipped with rldjax (the offline digits and JPEG datasets).
  from rldjax.data import digits, jpeg_images  # pylint: disable=import-outside-toplevel,unused-import
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(
        f"TFDS knows no dataset named {name!r} (nor is one prepared under that name in "
        f"{data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'}): check "
        "--config.dataset.name. It takes a TFDS name (cifar100, imagenet2012, rldjax_digits), "
        "image_folder:ROOT or, for in-memory kinds, synthetic:TRAIN,EVAL.") from None


def _prepare(builder, download: bool) -> None:
  """Prepares ``builder`` (process 0 only). Offline datasets are built quietly."""
  offline = getattr(builder, "OFFLINE", False)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if offline:
    logging.info("preparing %s offline in %s", builder.name, builder.data_dir)
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      builder.download_and_prepare()
  else:
    builder.download_and_prepare()


@contextlib.contextmanager
def _preparing(builder):
  """Holds ``<data dir>/.<name>.prepare.lock`` exclusively (``flock``: between
  processes, and between threads that each open it). The lock goes with the
  process if it dies."""
  root = getattr(builder, "data_dir_root", None) or os.path.dirname(
      os.path.dirname(str(builder.data_dir)))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{builder.name}.prepare.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def load_builder(name: str, data_dir: str | None = None, download: bool = False):
  """A prepared TFDS builder, or one clear error that says how to provide it.

  ``name`` is a TFDS name (``cifar100``, ``imagenet2012``, ``rldjax_digits``) or
  ``image_folder:ROOT`` for a ``tfds.folder_dataset.ImageFolder`` laid out as
  ``ROOT/<split>/<class>/<image>`` (Tiny-ImageNet, users' own data); labels are
  the class folders in sorted order.

  In a multi-process run every process takes the same collectives whatever
  it finds (process 0 prepares an offline dataset; each process may have its
  own ``data_dir``): a process that cannot open the dataset stops every
  process, naming itself, instead of leaving the others waiting.
  """
  builder, error, ready = None, None, False
  try:
    builder = _open_local(name, data_dir)
    ready = _is_prepared(builder)
  except DatasetNotFoundError as err:
    error = err
  if (error is None and not ready and distributed.is_primary()
      and (download or getattr(builder, "OFFLINE", False))):
    try:
      with _preparing(builder):
        builder = _open(name, data_dir)  # another run may have prepared it meanwhile
        if not builder.is_prepared():
          _prepare(builder, download)
      ready = True
    except Exception as err:  # pylint: disable=broad-except
      error = RunError(f"preparing dataset {name!r} failed: {type(err).__name__}: {err}")
  distributed.stop_if_any(error, f"opening dataset {name!r}")
  if not ready:  # the other processes re-open it to see what process 0 wrote
    builder = _open(name, data_dir)
    if not builder.is_prepared():
      error = _missing(name, data_dir)
  distributed.stop_if_any(error, f"opening dataset {name!r}")
  return builder


def _open_local(name: str, data_dir: str | None):
  """The builder of ``name`` as this process finds it, prepared or not (an
  image folder always is)."""
  if name.startswith(IMAGE_FOLDER_PREFIX):
    root = name[len(IMAGE_FOLDER_PREFIX):]
    if not os.path.isdir(root):
      raise DatasetNotFoundError(
          f"image folder {root!r} does not exist: lay images out as ROOT/<split>/<class>/<file> "
          f"and set --config.dataset.name=image_folder:ROOT")
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return tfds.ImageFolder(root)
  return _open(name, data_dir)


def _is_prepared(builder) -> bool:
  if builder is None:
    return False
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # An image folder is read as it is (its is_prepared() says False).
  return isinstance(builder, tfds.ImageFolder) or builder.is_prepared()


def num_examples(builder, split: str) -> int | None:
  """From the split metadata (None when the builder has none, as under
  ``tfds.testing.mock_data``)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    return None


def check_split(builder, split: str, field: str) -> None:
  """Raises :class:`DataError` naming ``field`` (``config.dataset.train_split``,
  ``config.dataset.eval_split``) when ``split`` is not a split of ``builder``
  (TFDS syntax: ``train``, ``train[:80%]``, ``train[:10]+test``) or selects no
  example. Builders without split metadata (``tfds.testing.mock_data``) pass."""
  try:
    count = builder.info.splits[split].num_examples
  except KeyError:  # no split metadata to check against
    return
  except ValueError as err:
    reason = _first_sentence(err)
    if "Should be one of" not in reason:
      reason += f" Its splits: {', '.join(sorted(builder.info.splits.keys()))}."
    raise DataError(f"{field}: {split!r} is not a split of dataset {builder.name!r}: "
                    f"{reason}") from None
  if count <= 0:
    raise DataError(f"{field}: {split!r} selects no example of dataset {builder.name!r}")


def _first_sentence(err: Exception) -> str:
  text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
  return text if text.endswith(".") else text + "."


def declared_num_classes(builder) -> int | None:
  """The label feature's class count, when the dataset declares one."""
  try:
    return int(builder.info.features["label"].num_classes)
  except (KeyError, AttributeError, TypeError):
    return None


def _absolute_instructions(builder, split: str) -> list | None:
  """``split`` (TFDS syntax) as absolute ``(splitname, from_, to)`` slices of
  whole splits; None when the builder has no split metadata (mock_data)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if not builder.info.splits:
    return None
  return tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)


def image_folder_examples(builder, split: str) -> list[tuple[str, str]]:
  """The ``(image path, label name)`` pairs of ``split`` of an image folder
  (``tfds.ImageFolder``), in the folder's order, TFDS slicing included
  (``train[:90%]``, ``train[90%:]+test``): the folder's own ``as_dataset``
  reads whole splits only. The percent rounding is TFDS's, so the count equals
  the split metadata's."""
  examples = getattr(builder, "_split_examples", None)  # tfds.ImageFolder's file list
  if examples is None:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    raise DataError(f"image folder {builder.data_dir}: tensorflow-datasets {tfds.__version__} "
                    "keeps no list of its files (ImageFolder._split_examples), which rldjax reads; "
                    "install a tensorflow-datasets version that does (4.9.10 does)")
  return [(e.image_path, e.label)
          for i in _absolute_instructions(builder, split)
          for e in examples[i.splitname][i.from_:i.to]]


def split_listing(builder, split: str) -> str | None:
  """CRC-32 (hex) of what identifies ``split`` of a streamed dataset without
  reading its content: for an image folder, its files' paths (relative to the
  folder) and labels in reading order, and the class names; for a prepared
  dataset, the whole splits it takes examples from, with the slice of each and
  the byte size and shard lengths recorded when it was prepared. None when the
  builder has no split metadata (``tfds.testing.mock_data``)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  instructions = _absolute_instructions(builder, split)
  if instructions is None:
    return None
  if isinstance(builder, tfds.ImageFolder):
    parts = [os.path.relpath(path, builder.data_dir) + "\t" + label
             for path, label in image_folder_examples(builder, split)]
    parts.append("\t".join(builder.info.features["label"].names))
  else:
    parts = []
    for i in instructions:
      info = builder.info.splits[i.splitname]
      parts.append(f"{i.splitname}[{i.from_}:{i.to}] {int(info.num_bytes)} bytes "
                   f"{list(info.shard_lengths)}")
  listing = "\n".join(parts).encode()
  return f"{zlib.crc32(listing):08x}"
