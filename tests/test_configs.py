"""Configs as users launch them: every pair and method builds, every loss
hyperparameter is settable, wrong keys and values fail before any data or
teacher is read (naming the field), the logit-standardisation preset, and the
README's recipe table equals the code's."""
import importlib
import re
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import cifar100, digits as digits_config, imagenet
from rldjax import losses, models
from rldjax.train import config as config_lib, objective

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_pair_file_and_method_builds():
  for pair in cifar100.PAIRS:
    module = importlib.import_module(f"experiments.configs.cifar100_{pair}")
    for method in config_lib.METHODS:
      c = module.get_config(f"method={method}")
      assert c.student.tag in models.tags() and c.teacher.tag in models.tags()
      assert c.to_dict() == cifar100.get_config(f"pair={pair},method={method}").to_dict()
      if method != "vanilla":  # the published teacher, converted, is the default
        assert c.teacher.checkpoint == f"runs/cifar100/teachers/{cifar100.PAIRS[pair][0]}/export"
      assert module.__doc__.count(f"cifar100_{pair}.py:method=") >= 2  # launch commands
  assert cifar100.get_config("pair=wrn40_2_shuv1,method=dkd").loss.beta == 8.0
  assert cifar100.get_config("pair=wrn40_2_shuv1,method=dkd").optimizer.lr == 0.01
  for pair in imagenet.PAIRS:
    for method in config_lib.METHODS:
      c = imagenet.get_config(f"pair={pair},method={method}")
      assert c.dataset.name == "imagenet2012" and c.teacher.tag in models.tags()
  assert imagenet.get_config("arch=ResNet34").method == "vanilla"


def test_headline_numbers_in_docstrings():
  for pair, numbers in cifar100.HEADLINE.items():
    doc = importlib.import_module(f"experiments.configs.cifar100_{pair}").__doc__
    for method, value in numbers.items():
      assert f"{method.upper()} {value:.2f}" in doc, (pair, method)


@pytest.mark.parametrize("method", [m for m in config_lib.METHODS if m != "vanilla"])
def test_every_loss_hyperparameter_is_a_config_field(method):
  c = cifar100.get_config(f"method={method}")
  fn = losses.get(method)
  fn = getattr(fn, "__wrapped__", fn)
  import inspect
  names = {p.name for p in inspect.signature(fn).parameters.values()
           if p.kind == p.KEYWORD_ONLY and p.name != "axis"}
  assert set(c.loss.keys()) == names
  config_lib.validate(c)


@pytest.mark.parametrize("field,value,match", [
    ("method", "fitnet", "config.method"),
    ("optimizer.lr", -0.1, "config.optimizer.lr"),
    ("batch_size", 0, "config.batch_size"),
    ("student.tag", "cifar/resnet9", "config.student.tag"),
    ("loss.gamma", 1.0, "config.loss.gamma"),
    ("loss.temperature", -1.0, "config.loss.temperature"),
    ("teacher.checkpoint", "", "config.teacher.checkpoint"),
    ("optimizer.schedule", "cosine", "config.optimizer.schedule"),
    ("kd_weight", -1.0, "config.kd_weight"),
    ("warmup_epochs", -2, "config.warmup_epochs"),
    ("eval_last_epochs", -1, "config.eval_last_epochs"),
    ("dataset.host_threads", -1, "config.dataset.host_threads: must be an int >= 0, got -1"),
    ("dataset.shuffle_buffer", 0, "config.dataset.shuffle_buffer: must be a positive int"),
    ("seed", 2**32, "config.seed"),  # would alias seed 0 (32-bit PRNG seeds)
    ("seed", -1, "config.seed"),
    ("optimizer.lr", float("inf"), "config.optimizer.lr: must be a finite number > 0, got inf"),
    ("ce_weight", float("inf"), "config.ce_weight: must be a finite number >= 0, got inf"),
    ("optimizer.weight_decay", float("inf"), "config.optimizer.weight_decay: must be a finite"),
    ("optimizer.momentum", float("nan"), "config.optimizer.momentum: must be a finite number"),
    ("optimizer.momentum", 1.5, r"config.optimizer.momentum: must be in \[0, 1\), got 1.5"),
    ("optimizer.momentum", 1.0, r"config.optimizer.momentum: must be in \[0, 1\)"),
])
def test_invalid_config_names_the_field(field, value, match):
  config = digits_config.get_config("method=kd,teacher=/nonexistent")
  target = config
  *parents, last = field.split(".")
  for p in parents:
    target = target[p]
  target[last] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


@pytest.mark.parametrize("method,field,value", [
    ("ldrld", "k", 100), ("ldrld", "rank_by", "both"), ("rld", "confidence_temperature", 0.0),
    ("dkd", "beta", -1.0), ("label_revision", "eta", -0.5)])
def test_invalid_loss_values_name_the_loss_field(method, field, value):
  config = cifar100.get_config(f"method={method}")
  config.loss[field] = value
  with pytest.raises(ValueError, match=f"config.loss.{field}"):
    config_lib.validate(config)


def _launch(*flags, cwd):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "experiments.train", *flags],
                        capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_command_line_errors_name_the_field_before_any_work(tmp_path):
  config = f"--config={ROOT}/experiments/configs/cifar100_res32x4_res8x4.py:method=dkd"
  common = (config, f"--workdir={tmp_path / 'run'}",
            f"--config.dataset.data_dir={tmp_path / 'no_data'}")
  unknown = _launch(*common, "--config.loss.gamma=1", cwd=tmp_path)
  assert unknown.returncode != 0
  assert "config.loss.gamma: no such field" in unknown.stderr
  assert "alpha, beta, standardize, temperature" in unknown.stderr
  bad = _launch(*common, "--config.loss.standardize=True", "--config.loss.temperature=-1",
                cwd=tmp_path)
  assert bad.returncode != 0
  assert "config.loss.temperature" in bad.stderr and "Traceback" not in bad.stderr
  assert "not prepared" not in bad.stderr  # failed before touching the dataset
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("--config.distill.k=3", "--config.distill.k=3: config.distill: no such field; config has: "
     "batch_size,"),
    ("--config.loss.k.top=3", "--config.loss.k.top=3: config.loss.k.top: no such field; "
     "config.loss.k is not a group of fields (it holds 7)")])
def test_an_override_below_a_missing_group_or_a_value_is_one_line(tmp_path, override, message):
  """ml_collections raises KeyError (not AttributeError) for these: status 1
  and the flag error line, not its traceback."""
  config = f"--config={ROOT}/experiments/configs/digits.py:method=ldrld,model=student"
  result = _launch(config, f"--workdir={tmp_path / 'run'}", override, cwd=tmp_path)
  assert result.returncode == 1
  assert f"FATAL Flags parsing error: {message}" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_config_file_and_config_string_errors_are_one_line(tmp_path):
  """A bad config-string argument or a missing config file: status 1 (a flag
  error) and one line naming the flag, not ml_collections' traceback."""
  configs = f"{ROOT}/experiments/configs"
  for flag, message in [
      (f"--config={configs}/digits.py:epochs=x", "config string epochs='x': expected an int"),
      (f"--config={configs}/digits.py:method=foo", "config.method: unknown method 'foo'"),
      (f"--config={configs}/cifar100_teacher.py:arch=resnet99",
       "config string arch='resnet99': one of resnet8"),
      (f"--config={configs}/nope.py:method=rld",
       f"no readable config file '{configs}/nope.py'")]:
    done = _launch(flag, f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"FATAL Flags parsing error: {flag}: {message}"), done.stderr
  assert not (tmp_path / "run").exists()


def test_an_empty_workdir_is_a_flag_error_not_the_current_directory(tmp_path):
  """``--workdir=$WORKDIR`` with the variable unset: status 1 naming the flag;
  the run trained in the current directory, scattering its files there."""
  for empty in ("", " "):
    done = _launch(f"--config={ROOT}/experiments/configs/digits.py:method=vanilla,epochs=1",
                   f"--workdir={empty}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith(
        f"FATAL Flags parsing error: flag --workdir={empty}: empty (an unset shell variable?): "
        "the run would write into the current directory; pass the run's directory"), done.stderr
  assert not list(tmp_path.iterdir())


def _batch(num_classes=100, seed=0):
  rng = np.random.default_rng(seed)
  s = jnp.asarray(rng.standard_normal((8, num_classes)) * 3, jnp.float32)
  t = jnp.asarray(rng.standard_normal((8, num_classes)) * 3, jnp.float32)
  y = jnp.asarray(rng.integers(0, num_classes, 8), jnp.int32)
  return s, t, y


def _ce(s, y):
  s = np.asarray(s, np.float64)
  logp = s - s.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), np.asarray(y)].mean()


def test_logit_stand_preset():
  s, t, y = _batch()
  mean = lambda v: float(jnp.mean(v))
  kd = cifar100.get_config("method=kd,stand=True")
  assert (kd.loss.standardize, kd.loss.temperature, kd.distill_weight, kd.ce_weight) == (
      True, 2.0, 9.0, 0.1)
  expected = 0.1 * _ce(s, y) + 9 * mean(losses.kd(s, t, temperature=2.0, standardize=True))
  assert float(objective(kd, s, t, y, 1)) == pytest.approx(expected, rel=1e-5)
  dkd = cifar100.get_config("pair=res56_res20,method=dkd,stand=True")
  assert (dkd.loss.alpha, dkd.loss.beta, dkd.loss.temperature) == (9.0, 18.0, 2.0)
  rld = cifar100.get_config("method=rld,stand=True")
  assert (rld.loss.alpha, rld.loss.beta, rld.loss.confidence_temperature) == (9.0, 72.0, 2.0)
  expected = _ce(s, y) + mean(losses.rld(s, t, y, alpha=9.0, beta=72.0, temperature=2.0,
                                         confidence_temperature=2.0, standardize=True))
  assert float(objective(rld, s, t, y, 20)) == pytest.approx(expected, rel=1e-5)
  rc = cifar100.get_config("method=rc,stand=True")
  assert (rc.kd_weight, rc.distill_weight, rc.loss.temperature) == (9.0, pytest.approx(0.9), 2.0)
  expected = (_ce(s, y) + 9 * mean(losses.kd(s, t, temperature=2.0, standardize=True))
              + 0.9 * mean(losses.rc(s, t, y, temperature=2.0, standardize=True)))
  assert float(objective(rc, s, t, y, 1)) == pytest.approx(expected, rel=1e-5)
  imnet = imagenet.get_config("pair=res50_mv1,method=dkd,stand=True")
  assert (imnet.loss.alpha, imnet.loss.beta, imnet.loss.temperature) == (9.0, 18.0, 2.0)
  for method in ("swap_kd", "ldrld", "label_revision", "vanilla"):
    with pytest.raises(ValueError, match="stand=True"):
      cifar100.get_config(f"method={method},stand=True")
  with pytest.raises(ValueError, match="stand='maybe'"):
    cifar100.get_config("method=kd,stand=maybe")


def test_unknown_config_string_argument():
  with pytest.raises(ValueError, match="unknown argument 'methd'"):
    cifar100.get_config("pair=res56_res20,methd=kd")
  with pytest.raises(ValueError, match="unknown argument 'pair'"):
    importlib.import_module("experiments.configs.cifar100_res56_res20").get_config("pair=x")


@pytest.mark.parametrize("module,arg,match", [
    ("cifar100", "pair=res32x4_res8x4,seed=abc", "config string seed='abc': expected an int"),
    ("cifar100", "pair=nonsense", "config string pair='nonsense': one of res56_res20, "),
    ("cifar100", "pair", "config string item 'pair' is not name=value"),
    ("cifar100_teacher", "arch=resnet56,seed=1.5", "config string seed='1.5': expected an int"),
    ("imagenet", "pair=zz", "config string pair='zz': one of res34_res18, res50_mv1"),
    ("imagenet", "arch=ResNet18,seed=x", "config string seed='x': expected an int"),
    ("cifar100", "pair=res56_res20,method=rld,method=kd",
     "config string: method given twice (method='rld', method='kd')"),
    ("cifar100_teacher", "arch=resnet33", "config string arch='resnet33': one of resnet8, "),
    ("cifar100_teacher", "arch=ResNet34", "config string arch='ResNet34': one of resnet8, "),
    ("cifar100", "arch=resnet32x4,method=kd", "arch= trains a teacher with vanilla CE; method "
     "cannot go with it"),
    ("cifar100_teacher", "arch=resnet56,pair=res56_res20,teacher=x", "pair, teacher cannot go"),
    ("imagenet", "arch=ResNet8", "config string arch='ResNet8': one of ResNet18, ResNet34, "),
    ("imagenet", "arch=ResNet34,stand=True", "stand cannot go with it"),
    ("digits", "epochs=x", "config string epochs='x': expected an int"),
    ("digits", "method=rld,seed=", "config string seed='': expected an int"),
])
def test_bad_config_string_values_are_config_errors_naming_the_argument(module, arg, match):
  get_config = importlib.import_module(f"experiments.configs.{module}").get_config
  with pytest.raises(config_lib.ConfigError, match=re.escape(match)):
    get_config(arg)


def test_readme_recipe_table_is_the_code():
  readme = (ROOT / "README.md").read_text()
  assert config_lib.published_recipe_table() in readme
