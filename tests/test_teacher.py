"""rldjax.train.teacher: a distillation run's teacher, loaded from its export
and checked against the config before any data is read (whole runs with a
teacher: tests/test_training.py, tests/test_multiprocess.py)."""
import numpy as np
import pytest

from experiments.configs import digits
from rldjax import errors, export
from rldjax.train import teacher
from tests.test_training import digits_teacher_variables


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  path = tmp_path_factory.mktemp("teacher") / "export"
  export.save_model(str(path), "digits/resnet14", digits_teacher_variables(0))
  return str(path)


def test_loads_the_exported_variables(exported):
  config = digits.get_config(f"method=rld,teacher={exported}")
  variables = teacher.load(config)
  want = digits_teacher_variables(0)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                want["params"]["fc"]["kernel"])
  loaded, identity = teacher.load_everywhere(config)  # one process: no collective
  assert sorted(loaded) == sorted(want) and len(identity) == 1


def test_vanilla_has_no_teacher(tmp_path):
  config = digits.get_config(f"method=vanilla,teacher={tmp_path / 'nothing'}")
  assert teacher.load(config) is None
  assert teacher.load_everywhere(config) == (None, {})


def test_a_missing_export_says_how_to_make_one(tmp_path):
  config = digits.get_config(f"method=kd,teacher={tmp_path / 'nothing'}")
  with pytest.raises(errors.TeacherError, match=r"config.teacher.checkpoint: no exported model "
                     r"at .*nothing\. Convert the published teachers once with `python -m "
                     r"rldjax.convert"):
    teacher.load(config)


def test_another_architecture_or_class_count_is_refused(exported):
  config = digits.get_config(f"method=kd,teacher={exported}")
  config.teacher.tag = "digits/resnet8"
  with pytest.raises(errors.TeacherError, match=r"config.teacher.tag is 'digits/resnet8' but "
                     r".* holds 'digits/resnet14'"):
    teacher.load(config)
  config = digits.get_config(f"method=kd,teacher={exported}")
  config.dataset.num_classes = 12
  with pytest.raises(errors.TeacherError, match=r"teacher has 10 classes, the dataset 12"):
    teacher.load(config)
