"""PyTorch interchange: errors name the entry, round trips are exact, the
command writes an export the trainer can load, and models behave as documented
(init distributions, dtype, features)."""
import collections
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import convert, errors, export, models

TAG = "cifar/resnet8"


def init_variables(tag=TAG, seed=0, **kw):
  module = models.create(tag, **kw)
  return module, _init_program(tag, tuple(sorted(kw.items())))(jax.random.key(seed, impl="rbg"))


@functools.lru_cache(maxsize=None)
def _init_program(tag, kw, params=None):
  """The jitted initialisation of ``tag`` (one compilation for every seed);
  with ``params`` (names of parameter collections' entries), only those
  arrays: XLA then drops the other initialisers, which for MobileNetV2 cut
  the compile time from ~10 s to under 1 s. Values are the same either way
  (Flax derives each parameter's key from its path)."""
  module = models.create(tag, **dict(kw))
  size = models.INPUT_SIZE[tag]

  def init(key):  # jit + the "rbg" PRNG: much faster to compile on CPU than eager threefry
    variables = module.init(key, jnp.zeros((2, size, size, 3)), train=False)
    if params is None:
      return variables
    return {(name, leaf): variables["params"][name][leaf] for name, leaf in params}
  return jax.jit(init)


def init_params(tag, *params, seed=0):
  """``{(module name, leaf): array}`` for the named parameters of ``tag``'s
  initialisation with ``seed``, as :func:`init_variables` gives them."""
  return _init_program(tag, (), params)(jax.random.key(seed, impl="rbg"))


def test_round_trip_flax_torch_flax_is_exact():
  _, variables = init_variables()
  state = convert.to_torch_state_dict(TAG, variables)
  back = convert.from_torch_state_dict(TAG, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))


def test_errors_name_the_entry():
  _, variables = init_variables()
  state = convert.to_torch_state_dict(TAG, variables)
  missing = dict(state)
  del missing["layer2.0.bn1.running_var"]
  with pytest.raises(ValueError, match=r"'layer2\.0\.bn1\.running_var' is missing"):
    convert.from_torch_state_dict(TAG, missing)
  extra = dict(state, **{"layer9.conv.weight": np.zeros(3)})
  with pytest.raises(ValueError, match=r"not in model cifar/resnet8: layer9\.conv\.weight"):
    convert.from_torch_state_dict(TAG, extra)
  wrong = dict(state)
  wrong["conv1.weight"] = np.zeros((16, 3, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"'conv1\.weight' has shape \(16, 3, 5, 5\)"):
    convert.from_torch_state_dict(TAG, wrong)
  # num_batches_tracked is accepted and dropped.
  ok = dict(state, **{"bn1.num_batches_tracked": np.array(3)})
  convert.from_torch_state_dict(TAG, ok)


def test_num_classes_is_inferred_from_the_classifier():
  _, variables = init_variables(num_classes=10)
  state = convert.to_torch_state_dict(TAG, variables)
  back = convert.from_torch_state_dict(TAG, state)
  assert back["params"]["fc"]["kernel"].shape == (64, 10)


def test_load_torch_checkpoint_and_command(tmp_path):
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  _, variables = init_variables(num_classes=100)
  state = convert.to_torch_state_dict(TAG, variables)
  path = tmp_path / "teacher.pth"
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, "epoch": 240}, path)
  loaded = convert.load_torch_checkpoint(str(path))
  assert list(loaded) == list(state)
  out = tmp_path / "export"
  subprocess.run([sys.executable, "-m", "rldjax.convert", "--arch", "resnet8",
                  "--num_classes", "100", str(path), str(out)], check=True)
  tag, num_classes, restored = export.load_model(str(out))
  assert (tag, num_classes) == (TAG, 100)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))


def test_the_command_refuses_what_it_cannot_convert_with_one_message(tmp_path, capsys,
                                                                     monkeypatch):
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  _, variables = init_variables()
  good = tmp_path / "good.pth"
  torch.save(_torch_tensors(torch, convert.to_torch_state_dict("cifar/resnet14", init_variables(
      "cifar/resnet14")[1])), good)
  (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(2000))
  (tmp_path / "noise.tar").write_bytes(np.random.default_rng(1).bytes(2000))
  pickled = tmp_path / "objects.pth"
  torch.save({"model": _torch_tensors(torch, convert.to_torch_state_dict(TAG, variables)),
              "opt": collections.OrderedDict(note=Unpicklable())}, pickled)
  cases = [
      (["--arch", "resnet8", str(tmp_path / "noise.pth")], "cannot convert .*noise.pth as "
       "cifar/resnet8: "),
      (["--arch", "resnet8", str(pickled)], r"objects.pth is not a PyTorch checkpoint of "
       r"tensors: torch.load\(weights_only=True\) refused it"),
      (["--arch", "resnet8", str(good)], r"as cifar/resnet8: ValueError: state_dict entr"),
      ([str(tmp_path / "noise.tar")], "noise.tar is not a readable tar archive"),
      ([str(tmp_path)], "is a directory: pass a .pth file or a teacher .tar"),
  ]
  for arguments, message in cases:
    with pytest.raises(SystemExit) as stop:
      convert.main([*arguments, str(tmp_path / "out")])
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err.splitlines()[-1]), arguments
  assert not (tmp_path / "out").exists()
  # An empty output (an unset shell variable) wrote the export into the
  # current directory.
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  for out in ("", " "):
    with pytest.raises(SystemExit) as stop:
      convert.main(["--arch", "resnet14", str(good), out])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: out: empty (an unset shell variable?): pass the output directory")
  assert not list((tmp_path / "cwd").iterdir())


def test_damaged_files_end_with_status_2_however_the_unpickler_fails(tmp_path, capsys):
  """torch.load on damaged bytes fails in many ways besides UnpicklingError
  (KeyError from its memo, IndexError, ...): 20 of these 300 files were
  tracebacks. Each is one message and status 2."""
  pytest.importorskip("torch", reason="the torch extra is not installed")
  rng = np.random.default_rng(0)
  for i in range(300):
    opening = b"" if i % 2 else bytes([0x80, 0x02])  # a pickle protocol-2 opening, as torch's
    path = tmp_path / f"damaged{i}.pth"
    path.write_bytes(opening + rng.bytes(int(rng.integers(1, 5000))))
    with pytest.raises(SystemExit) as stop:
      convert.main(["--arch", "resnet8", str(path), str(tmp_path / "out")])
    assert stop.value.code == 2, path
    assert f"cannot convert {path} as cifar/resnet8: " in capsys.readouterr().err, path
  assert not (tmp_path / "out").exists()


class Unpicklable:
  """An object that torch.load(weights_only=True) must refuse to build."""


def _torch_tensors(torch, state):
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def test_teacher_tar_converts_every_teacher(tmp_path):
  """A synthetic cifar_teachers.tar in mdistiller's layout: every teacher is
  converted to OUT/<arch>/export, from its last-epoch checkpoint."""
  import io
  import tarfile
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  expected = {}
  tar_path = tmp_path / "cifar_teachers.tar"
  with tarfile.open(tar_path, "w") as tar:
    def add(name, obj):
      buffer = io.BytesIO()
      torch.save(obj, buffer)
      info = tarfile.TarInfo(name)
      info.size = buffer.tell()
      buffer.seek(0)
      tar.addfile(info, buffer)
    for seed, arch in enumerate(("resnet8", "resnet14")):
      _, variables = init_variables(f"cifar/{arch}", seed=seed, num_classes=100)
      state = convert.to_torch_state_dict(f"cifar/{arch}", variables)
      state["bn1.num_batches_tracked"] = np.array(12345)
      expected[arch] = jax.tree_util.tree_map(np.asarray, dict(variables))
      add(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth",
          {"model": _torch_tensors(torch, state), "epoch": 240, "best_acc": 70.0})
      # An older epoch of the same teacher (random weights) must not be taken.
      _, other = init_variables(f"cifar/{arch}", seed=seed + 10, num_classes=100)
      add(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_100.pth",
          {"model": _torch_tensors(torch, convert.to_torch_state_dict(f"cifar/{arch}", other))})
    info = tarfile.TarInfo("cifar_teachers/README")
    info.size = 2
    tar.addfile(info, io.BytesIO(b"hi"))
  assert {a: e for a, (_, e) in convert.teachers_in_tar(str(tar_path)).items()} == {
      "resnet8": 240, "resnet14": 240}
  out = tmp_path / "teachers"
  done = subprocess.run([sys.executable, "-m", "rldjax.convert", str(tar_path), str(out)],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  for arch, variables in expected.items():
    tag, num_classes, restored = export.load_model(str(out / arch / "export"))
    assert (tag, num_classes) == (f"cifar/{arch}", 100)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, variables)
  # Run again after stopping part-way: what is there is kept, the rest converted.
  files = {p: p.read_bytes() for p in (out / "resnet8" / "export").iterdir()}
  shutil.rmtree(out / "resnet14")
  again = subprocess.run([sys.executable, "-m", "rldjax.convert", str(tar_path), str(out)],
                         capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.splitlines() == [
      f"wrote cifar/resnet14 to {out / 'resnet14' / 'export'}",
      f"{out / 'resnet8' / 'export'} already holds this cifar/resnet8: left as it is"]
  assert {p: p.read_bytes() for p in (out / "resnet8" / "export").iterdir()} == files
  _, _, restored = export.load_model(str(out / "resnet14" / "export"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, expected["resnet14"])
  # Another model where a teacher goes is never overwritten: status 2, one message.
  other = tmp_path / "other"
  export.save_model(str(other / "resnet8" / "export"), "cifar/resnet8",
                    init_variables("cifar/resnet8", seed=7, num_classes=100)[1])
  refused = subprocess.run([sys.executable, "-m", "rldjax.convert", str(tar_path), str(other)],
                           capture_output=True, text=True)
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert refused.stderr.splitlines()[-1].endswith(
      f"already holds another exported model (cifar/resnet8); remove it, or choose another "
      "output directory")


def test_the_command_writes_only_into_a_new_an_empty_or_the_same_export(tmp_path, capsys):
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  _, variables = init_variables(num_classes=100)
  path = tmp_path / "teacher.pth"
  torch.save(_torch_tensors(torch, convert.to_torch_state_dict(TAG, variables)), path)
  (tmp_path / "empty").mkdir()
  convert.main(["--arch", "resnet8", str(path), str(tmp_path / "empty")])
  convert.main(["--arch", "resnet8", str(path), str(tmp_path / "empty")])  # the same: kept
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"{tmp_path / 'empty'} already holds this {TAG} (100 classes): left as it is")
  (tmp_path / "workdir").mkdir()
  (tmp_path / "workdir" / "config.json").write_text("{}")
  (tmp_path / "a_file").write_text("x")
  other = tmp_path / "other.pth"
  torch.save(_torch_tensors(torch, convert.to_torch_state_dict(TAG, init_variables(
      num_classes=100, seed=5)[1])), other)
  for source, out, message in [
      (path, "workdir", "is not empty and holds no exported model"),
      (path, "a_file", "cannot write .*a_file: "),
      (other, "empty", r"already holds another exported model \(cifar/resnet8\)")]:
    with pytest.raises(SystemExit) as stop:
      convert.main(["--arch", "resnet8", str(source), str(tmp_path / out)])
    assert stop.value.code == 2
    assert re.search(message, capsys.readouterr().err.splitlines()[-1]), out
  (tmp_path / "damaged").mkdir()
  (tmp_path / "damaged" / "model.json").write_text('{"tag": "cifar/resnet8", "num_classes": 100}')
  (tmp_path / "damaged" / export.VARIABLES_FILE).write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(SystemExit) as stop:
    convert.main(["--arch", "resnet8", str(path), str(tmp_path / "damaged")])
  assert stop.value.code == 2
  assert "holds an export that cannot be read" in capsys.readouterr().err.splitlines()[-1]
  assert os.listdir(tmp_path / "workdir") == ["config.json"]
  _, _, kept = export.load_model(str(tmp_path / "empty"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, kept,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))


def test_torchvision_style_bare_state_dict(tmp_path):
  """torchvision's ImageNet weights: a bare state_dict with num_batches_tracked."""
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  tag = "imagenet/ResNet18"
  _, variables = init_variables(tag, num_classes=1000)
  state = convert.to_torch_state_dict(tag, variables)
  for name in [k[:-len(".running_var")] for k in state if k.endswith(".running_var")]:
    state[f"{name}.num_batches_tracked"] = np.array(0)
  path = tmp_path / "resnet18-f37072fd.pth"
  torch.save(_torch_tensors(torch, state), path)
  loaded = convert.from_torch_state_dict(tag, convert.load_torch_checkpoint(str(path)))
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))


def test_export_round_trip_and_refuses_overwrite(tmp_path):
  _, variables = init_variables()
  export.save_model(str(tmp_path / "m"), TAG, variables)
  tag, n, restored = export.load_model(str(tmp_path / "m"))
  assert tag == TAG and n == 100
  with pytest.raises(FileExistsError):
    export.save_model(str(tmp_path / "m"), TAG, variables)
  with pytest.raises(FileNotFoundError, match="not an exported rldjax model"):
    export.load_model(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))
  # Frozen variables (flax.core.freeze) are written the same way.
  import flax  # pylint: disable=import-outside-toplevel
  export.save_model(str(tmp_path / "frozen"), TAG, flax.core.freeze(dict(variables)))
  _, _, frozen = export.load_model(str(tmp_path / "frozen"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, restored)
  # A plain npz: numpy alone reads it, named by the variables' paths.
  with np.load(tmp_path / "m" / export.VARIABLES_FILE) as npz:
    np.testing.assert_array_equal(npz["params/fc/bias"], variables["params"]["fc"]["bias"])
  # A caller that knows the number of classes (the trainer) writes the same export.
  export.save_model(str(tmp_path / "known"), TAG, variables, {"epoch": 3}, num_classes=100)
  assert export.read_metadata(str(tmp_path / "known")) == {"tag": TAG, "num_classes": 100,
                                                           "epoch": 3}
  _, _, known = export.load_model(str(tmp_path / "known"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, known, restored)


def test_export_written_before_the_npz_layout_is_still_read(tmp_path):
  """Exports of earlier versions: model.json plus an Orbax checkpoint in variables/."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  _, variables = init_variables()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(tmp_path / "old" / "variables"), dict(variables))
  checkpointer.wait_until_finished()
  checkpointer.close()
  (tmp_path / "old" / "model.json").write_text(json.dumps({"tag": TAG, "num_classes": 100}))
  tag, n, restored = export.load_model(str(tmp_path / "old"))
  assert (tag, n) == (TAG, 100)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored,
                         jax.tree_util.tree_map(np.asarray, dict(variables)))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "model.json").write_text(json.dumps({"tag": TAG, "num_classes": 100}))
  with pytest.raises(errors.TeacherError, match="incomplete"):
    export.load_model(str(tmp_path / "bad"))


def test_truncated_export_is_refused_naming_the_file(tmp_path):
  _, variables = init_variables()
  export.save_model(str(tmp_path / "m"), TAG, variables)
  npz = tmp_path / "m" / export.VARIABLES_FILE
  npz.write_bytes(npz.read_bytes()[:1000])
  with pytest.raises(errors.TeacherError, match=f"{npz}.*cannot be read"):
    export.load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("tag,conv,std", [
    ("cifar/resnet8", "layer1.0.conv1", np.sqrt(2 / (16 * 9))),      # He-normal fan_out
    ("cifar/MobileNetV2", "blocks.1.0.conv.3", np.sqrt(2 / (48 * 9))),  # depthwise
])
def test_he_normal_fan_out_init(tag, conv, std):
  kernel = np.asarray(init_params(tag, (conv, "kernel"))[conv, "kernel"])
  assert abs(kernel.std() / std - 1) < 0.1
  assert np.abs(kernel).max() > 2 * std  # untruncated normal


def test_only_the_named_parameters_initialise_as_the_whole_model():
  _, variables = init_variables("cifar/resnet8", seed=3)
  picked = init_params("cifar/resnet8", ("layer1.0.conv1", "kernel"), ("fc", "bias"), seed=3)
  for name, leaf in picked:
    np.testing.assert_array_equal(picked[name, leaf], variables["params"][name][leaf])


def test_torch_default_init_for_shufflenets_and_heads():
  shuffle = init_params("cifar/ShuffleV1", ("layer1.1.conv1", "kernel"), ("linear", "bias"))
  kernel = np.asarray(shuffle["layer1.1.conv1", "kernel"])  # [1,1,80,60]
  bound = 1 / np.sqrt(80)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.abs(np.asarray(shuffle["linear", "bias"])).max() <= 1 / np.sqrt(960)
  wrn = init_params("cifar/wrn_16_1", ("fc", "bias"))
  assert (np.asarray(wrn["fc", "bias"]) == 0).all()
  vgg = init_params("cifar/vgg8", ("classifier", "kernel"))
  assert abs(np.asarray(vgg["classifier", "kernel"]).std() / 0.01 - 1) < 0.1


def test_bf16_compute_with_f32_params_and_features():
  module, variables = init_variables(dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  logits, feats = jax.jit(lambda v, x: module.apply(v, x, train=False, features=True))(
      variables, x)
  assert logits.dtype == jnp.float32 and feats["pooled"].shape == (2, 64)
  f32 = jax.jit(lambda v, x: models.create(TAG).apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(logits, f32, atol=0.05 * np.abs(f32).max())


def test_batch_norm_matches_torch_semantics():
  bn = models.TorchBatchNorm()
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 5)) * 2 + 1, jnp.float32)
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x, np.float64).reshape(-1, 5)
  np.testing.assert_allclose(y.reshape(-1, 5), (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * xs.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * xs.var(0, ddof=1),
                             rtol=1e-5)


def test_unknown_tag():
  with pytest.raises(KeyError, match="unknown model tag"):
    models.create("cifar/resnet9")


@pytest.mark.parametrize("tag", [  # one of each model class
    "cifar/resnet8", "cifar/ResNet18", "cifar/wrn_16_1", "cifar/vgg8", "cifar/MobileNetV2",
    "cifar/ShuffleV1", "cifar/ShuffleV2", "imagenet/ResNet18", "imagenet/MobileNetV1"])
def test_every_model_refuses_unbatched_and_integer_images(tag):
  module = models.create(tag, num_classes=10)
  size = models.registry.INPUT_SIZE[tag]
  with pytest.raises(ValueError, match=r"images must be a batch \[N, H, W, C\].*got shape "
                     rf"\({size}, {size}, 3\)"):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x), jnp.zeros((size, size, 3)))
  with pytest.raises(TypeError, match="images must be floating point.*got dtype uint8"):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                   jnp.zeros((1, size, size, 3), jnp.uint8))


def test_install_hint_matches_the_readme(monkeypatch):
  import builtins
  import pathlib
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  assert convert.INSTALL_TORCH in readme
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("no torch here")
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(ImportError, match=re.escape(convert.INSTALL_TORCH)):
    convert.load_torch_checkpoint("missing.pth")
