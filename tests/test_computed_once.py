"""tests.conftest.computed_once, which the parity modules' large programs go
through: computed by the first pytest-xdist worker that asks, read back
unchanged (keys, tuple order, dtypes, shapes, values) by the others."""
import numpy as np

from tests.conftest import computed_once


def test_the_first_worker_computes_and_the_others_read_the_same_arrays(tmp_path, monkeypatch):
  class Factory:  # a worker's tmp_path_factory: its base directory under the session's
    def getbasetemp(self):
      return tmp_path / "popen-gw1"
  calls = []

  def compute():
    calls.append(1)
    return {"case0/set0/kd": (np.arange(3, dtype=np.float32), np.float32(1.5),
                              np.ones((2, 3), np.float32)),
            "a#b": (np.array([7], np.int32),)}
  monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
  first = computed_once(Factory(), "probe", compute)
  again = computed_once(Factory(), "probe", compute)
  assert len(calls) == 1
  assert sorted(again) == sorted(first)
  for key in first:
    assert len(again[key]) == len(first[key])
    for a, b in zip(first[key], again[key]):
      assert np.asarray(a).dtype == b.dtype and np.shape(a) == b.shape
      np.testing.assert_array_equal(a, b)
  # Alone (no xdist), every call computes: nothing is shared between sessions.
  monkeypatch.delenv("PYTEST_XDIST_WORKER")
  computed_once(Factory(), "probe", compute)
  assert len(calls) == 2
