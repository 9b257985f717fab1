"""End-to-end training: resume equality, corrupt checkpoints, the mock-data
pipeline, config validation, schedules."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import digits as digits_config
from rldjax import export, models
from rldjax.data import input_pipeline
from rldjax.train import config as config_lib, loop, optim


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  input_pipeline.load_builder("rldjax_digits", str(path))  # prepared offline
  return str(path)


@pytest.fixture(scope="module")
def teacher_export(tmp_path_factory):
  """An (untrained) digits teacher, exported as the converter would."""
  path = tmp_path_factory.mktemp("teacher") / "export"
  module = models.create("digits/resnet14")
  variables = module.init(jax.random.key(3), jnp.zeros((1, 8, 8, 3)), train=False)
  export.save_model(str(path), "digits/resnet14", variables)
  return str(path)


def small_config(data_dir, teacher, method="rld", epochs=2):
  c = digits_config.get_config(f"method={method},teacher={teacher},epochs={epochs}")
  c.dataset.data_dir = data_dir
  c.batch_size = 256  # 5 steps per epoch
  c.checkpoint.every_steps = 3
  c.warmup_epochs = 2
  return c


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_resume_equals_uninterrupted_run(tmp_path, data_dir, teacher_export, monkeypatch):
  config = small_config(data_dir, teacher_export)
  monkeypatch.chdir(tmp_path)
  straight = loop.train_and_evaluate(config, "straight")  # a relative workdir works too
  first = loop.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_epochs=1)
  assert not first["finished"] and first["epochs_completed"] == 1
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["finished"] and resumed["epochs_completed"] == 2
  _, _, a = export.load_model(str(tmp_path / "straight" / "export" / "last"))
  _, _, b = export.load_model(str(tmp_path / "resumed" / "export" / "last"))
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert [h["top1"] for h in straight["history"]] == [h["top1"] for h in resumed["history"]]
  results = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert results["best_top1"] == max(h["top1"] for h in results["history"])
  assert list((tmp_path / "straight").glob("events.out.tfevents*"))


def test_corrupt_checkpoint_is_reported_and_skipped(tmp_path, data_dir, teacher_export, caplog):
  config = small_config(data_dir, teacher_export, epochs=2)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, str(workdir), stop_after_epochs=1)
  ckpt_dir = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert steps == [3, 5], steps  # the mid-epoch save and the end-of-epoch one
  # Corrupt the newest: truncate every file in it.
  for path in (ckpt_dir / str(steps[-1])).rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  resumed = loop.train_and_evaluate(config, str(workdir))
  assert "corrupt" in caplog.text and f"step {steps[-1]}" in caplog.text
  assert resumed["finished"]
  # It continued from step 3, mid-epoch 1, and still matches a straight run.
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  _, _, a = export.load_model(str(tmp_path / "straight" / "export" / "last"))
  _, _, b = export.load_model(str(workdir / "export" / "last"))
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert straight["history"][-1]["top1"] == resumed["history"][-1]["top1"]


def test_mock_cifar100_train_and_evaluate(tmp_path):
  config = config_lib.base_config()
  config_lib.apply_method(config, "vanilla")
  config.student.tag = "cifar/resnet8"
  config.batch_size = 8
  config.num_epochs = 1
  config.dataset.shuffle_buffer = 64
  config.log_every_steps = 2
  config.dataset.download = True  # intercepted by mock_data: nothing is fetched
  with tfds.testing.mock_data(num_examples=20):
    results = loop.train_and_evaluate(config, str(tmp_path / "mock"))
  assert results["finished"]
  history = results["history"]
  assert len(history) == 1 and history[0]["step"] == 2  # 20 // 8 steps
  assert 0.0 <= history[0]["top1"] <= 100.0
  assert os.path.isdir(tmp_path / "mock" / "export" / "best")


def test_eval_counts_every_example_once(data_dir):
  builder = input_pipeline.load_builder("rldjax_digits", data_dir)
  batches = list(input_pipeline.eval_batches(builder, "test", global_batch=100, kind="digits",
                                             image_size=8))
  assert len(batches) == 4 and all(len(b["label"]) == 100 for b in batches)
  assert sum(b["mask"].sum() for b in batches) == 359
  assert batches[-1]["mask"][59:].sum() == 0


def test_train_pipeline_is_deterministic_and_resumable(data_dir):
  builder = input_pipeline.load_builder("rldjax_digits", data_dir)
  kw = dict(global_batch=64, epoch=3, seed=7, kind="digits", image_size=8)
  full = list(input_pipeline.train_batches(builder, "train", **kw))
  again = list(input_pipeline.train_batches(builder, "train", **kw, start_step=5))
  assert len(full) == 1438 // 64
  for a, b in zip(full[5:], again):
    np.testing.assert_array_equal(a["image"], b["image"])
  other_epoch = next(input_pipeline.train_batches(builder, "train", **dict(kw, epoch=4)))
  assert not np.array_equal(other_epoch["label"], full[0]["label"])


def test_missing_dataset_message(tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="--config.dataset.data_dir"):
    input_pipeline.load_builder("cifar100", str(tmp_path))


def test_schedules():
  from rldjax.train import learning_rate
  c = config_lib.base_config()
  c.optimizer.update(lr=0.1, decay_epochs=(2, 4))
  assert [float(learning_rate(c, e)) for e in (1, 2, 3, 4, 5)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  sched = optim.schedule(c, steps_per_epoch=10)
  assert [float(sched(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  c.optimizer.update(decay_epochs=(5,), lr_warmup_epochs=4)
  assert float(learning_rate(c, 1)) == pytest.approx(0.025)
  assert float(learning_rate(c, 4)) == pytest.approx(0.1)
  c.optimizer.update(schedule="published_ldrld", decay_epochs=(30,), lr_warmup_epochs=20)
  assert float(learning_rate(c, 1)) == pytest.approx(0.005)
  assert float(learning_rate(c, 19)) == pytest.approx(0.095)   # 19/20
  assert float(learning_rate(c, 30)) == pytest.approx(0.095)   # nothing written: stays
  assert float(learning_rate(c, 31)) == pytest.approx(0.01)    # after the decay: exactly base·0.1


def test_image_folder_dataset(tmp_path):
  """An ImageFolder (ROOT/<split>/<class>/<file>) goes through the same pipeline."""
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("test", 3)):
    for label in ("cat", "dog"):
      folder = tmp_path / "imgs" / split / label
      folder.mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
  builder = input_pipeline.load_builder(f"image_folder:{tmp_path / 'imgs'}")
  assert input_pipeline.num_examples(builder, "train") == 12
  train = list(input_pipeline.train_batches(builder, "train", global_batch=4, epoch=0, seed=0,
                                            kind="imagenet", image_size=32))
  assert len(train) == 3 and train[0]["image"].shape == (4, 32, 32, 3)
  assert set(np.concatenate([b["label"] for b in train])) == {0, 1}
  evals = list(input_pipeline.eval_batches(builder, "test", global_batch=4, kind="imagenet",
                                           image_size=32))
  assert sum(b["mask"].sum() for b in evals) == 6
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="image_folder"):
    input_pipeline.load_builder(f"image_folder:{tmp_path / 'missing'}")
