"""rldjax.train.checkpoint: the packed state round-trips bit for bit; checkpoints
written before packing (the tree as item ``state``) still restore; a packed
checkpoint of another state's layout is refused (reported corrupt, moved aside)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rldjax.train import checkpoint
from rldjax.train.state import TrainState
from tests.side_by_side import run_in_threads


def _state(seed=0, width=5):
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, width)), jnp.float32)},
            "bn": {"scale": jnp.asarray(rng.standard_normal(width), jnp.float32)}}
  stats = {"bn": {"mean": jnp.asarray(rng.standard_normal(width), jnp.float32)}}
  state = TrainState.create(params, stats, optax.sgd(0.1, momentum=0.9), jax.random.key(seed))
  return state.replace(step=jnp.asarray(7, jnp.int32))


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pack_unpack_round_trip():
  state = _state()
  packed = checkpoint.pack(state)
  assert set(packed) == {"float32", "int32", "uint32"}
  assert all(v.ndim == 1 for v in packed.values())
  n_float = sum(x.size for x in jax.tree_util.tree_leaves(state) if x.dtype == jnp.float32)
  assert packed["float32"].shape == (n_float,)
  abstract = checkpoint.abstract(state)
  unpacked = checkpoint.unpack(packed, abstract)
  _leaves_equal(unpacked, state)
  # Placed as the abstract state says (the trainer's: replicated over its mesh).
  for got, like in zip(jax.tree_util.tree_leaves(unpacked), jax.tree_util.tree_leaves(abstract)):
    assert got.sharding == like.sharding


def test_unpack_refuses_another_layout():
  packed = checkpoint.pack(_state(width=5))
  with pytest.raises(ValueError, match="float32"):
    checkpoint.unpack(packed, checkpoint.abstract(_state(width=6)))


def test_save_restore_and_legacy_checkpoints(tmp_path):
  state, history = _state(), [{"epoch": 1, "top1": 50.0}]
  manager = checkpoint.create_manager(str(tmp_path / "packed"))
  assert checkpoint.save(manager, state, history, metrics={"top1": 50.0}, force=True)
  manager.wait_until_finished()
  assert (tmp_path / "packed" / "7" / "packed").is_dir()
  restored, got = checkpoint.restore_latest(manager, checkpoint.abstract(state))
  manager.close()
  _leaves_equal(restored, state)
  assert got == history

  legacy = checkpoint.create_manager(str(tmp_path / "legacy"))  # the format before packing
  legacy.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         history=ocp.args.JsonSave(history)), force=True)
  legacy.wait_until_finished()
  restored, got = checkpoint.restore_latest(legacy, checkpoint.abstract(state))
  legacy.close()
  _leaves_equal(restored, state)
  assert got == history


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_packed_checkpoint_of_another_layout_is_moved_aside(tmp_path, caplog):
  """Refused on its metadata, before Orbax starts reading arrays (a failed
  read leaves never-awaited coroutines behind: the warning is an error here)."""
  directory = tmp_path / "checkpoints"
  manager = checkpoint.create_manager(str(directory))
  checkpoint.save(manager, _state(width=5), [], force=True)
  manager.wait_until_finished()
  assert checkpoint.restore_latest(manager, checkpoint.abstract(_state(width=6))) is None
  manager.close()
  assert "corrupt" in caplog.text and "another state layout" in caplog.text
  assert "(302,)" in caplog.text  # names what it found
  assert len(list((tmp_path / "checkpoints_corrupt").iterdir())) == 1


def test_runs_in_threads_save_and_restore_side_by_side(tmp_path):
  """Four runs' managers in four threads, saving at once (the demo's runs
  side by side): every save lands and every run restores its own newest
  state. Without the process-wide Orbax lock, 3 of 4 threads failed."""
  restored = {}

  def run(i):
    manager = checkpoint.create_manager(str(tmp_path / f"run{i}" / "checkpoints"))
    state = _state(seed=i)
    for step in range(1, 9):
      state = state.replace(step=jnp.asarray(step, jnp.int32))
      assert checkpoint.save(manager, state, [{"epoch": step}], metrics={"top1": float(step)},
                             force=True)
    restored[i] = checkpoint.restore_latest(manager, checkpoint.abstract(state)), state
    checkpoint.close(manager)
  failures = run_in_threads(run, 4)
  assert not failures, failures
  assert sorted(restored) == [0, 1, 2, 3]
  for i, ((state, history), saved) in restored.items():
    assert int(state.step) == 8 and history == [{"epoch": 8}]
    _leaves_equal(state, saved)


def test_checksums_change_with_any_one_word_and_match_numpy():
  rng = np.random.default_rng(3)
  packed = {"float32": jnp.asarray(rng.standard_normal(1001), jnp.float32),
            "int32": jnp.asarray(rng.integers(-9, 9, 7), jnp.int32),
            "bfloat16": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
            "bool": jnp.asarray([True, False, True])}
  sums = {k: int(v) for k, v in checkpoint._checksums(packed).items()}  # pylint: disable=protected-access
  words = np.asarray(packed["float32"]).view(np.uint32).astype(np.uint64)
  odd = 2 * np.arange(words.size, dtype=np.uint64) + 1
  assert sums["float32"] == int(np.sum(words * odd) % 2**32)
  for i in (0, 500, 1000):
    for bit in (0, 17, 31):
      flipped = np.asarray(packed["float32"]).view(np.uint32).copy()
      flipped[i] ^= np.uint32(1 << bit)
      changed = checkpoint._checksums({"float32": jnp.asarray(flipped.view(np.float32))})  # pylint: disable=protected-access
      assert int(changed["float32"]) != sums["float32"]
  bf = np.asarray(packed["bfloat16"]).view(np.uint16).copy()
  bf[2] ^= np.uint16(1)
  assert int(checkpoint._checksums({"x": jnp.asarray(bf).view(jnp.bfloat16)})["x"]) != sums[  # pylint: disable=protected-access
      "bfloat16"]


@pytest.mark.parametrize("damage", ["data", "history"])
def test_a_checkpoint_whose_bytes_changed_is_moved_aside(tmp_path, caplog, damage):
  """Orbax reads a data file with one flipped bit, or a history with another
  number, without an error; the checksums make it a corrupt checkpoint, and
  the older one is used."""
  directory = tmp_path / "checkpoints"
  manager = checkpoint.create_manager(str(directory))
  older = _state(seed=1, width=64).replace(step=jnp.asarray(6, jnp.int32))
  checkpoint.save(manager, older, [{"epoch": 1, "top1": 40.0}], force=True)
  checkpoint.save(manager, _state(width=64),
                  [{"epoch": 1, "top1": 40.0}, {"epoch": 2, "top1": 50.0}], force=True)
  manager.wait_until_finished()
  if damage == "data":  # the process's data file: the arrays' chunks (~5 kB)
    data = max((p for p in (directory / "7" / "packed" / "ocdbt.process_0").rglob("*")
                if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    data.write_bytes(bytes(raw))
  else:
    history = directory / "7" / "history" / "metadata"
    history.write_text(history.read_text().replace("50.0", "55.0"))
  restored, history = checkpoint.restore_latest(manager, checkpoint.abstract(older))
  manager.close()
  _leaves_equal(restored, older)
  assert history == [{"epoch": 1, "top1": 40.0}]
  expected = "packed float32" if damage == "data" else "history"
  assert "corrupt" in caplog.text and f"checksum mismatch in {expected}:" in caplog.text
  assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints_corrupt").iterdir()] == ["7"]


@pytest.mark.parametrize("late", ["before", "after"])
def test_a_late_save_of_a_run_that_lost_its_lock_does_not_stop_the_new_holder(tmp_path, late):
  """A process suspended in an asynchronous save finishes it when it wakes,
  after another launch took its lock over and resumed from the step before
  (run_lock.py). Its checkpoint lands in the new holder's directory, and its
  manager deletes a step the new holder's manager still lists. Whichever of
  the two saves of that step lands last is the one kept; both are complete,
  checksummed states of the same step, the new holder saves on without an
  error, and the newest checkpoint restores."""
  directory = str(tmp_path / "checkpoints")
  first = checkpoint.create_manager(directory)
  for step in (5, 6):
    checkpoint.save(first, _state(step).replace(step=jnp.asarray(step, jnp.int32)), [step])
  checkpoint.close(first)
  lost = checkpoint.create_manager(directory)  # the suspended run
  holder = checkpoint.create_manager(directory)  # resumed from 6
  theirs = _state(seed=70).replace(step=jnp.asarray(7, jnp.int32))
  ours = _state(seed=71).replace(step=jnp.asarray(7, jnp.int32))

  def save_late():
    checkpoint.save(lost, theirs, ["theirs"])
    checkpoint.close(lost)  # its policy deletes step 5, which the holder lists

  if late == "before":
    save_late()
  assert checkpoint.save(holder, ours, ["ours"])
  holder.wait_until_finished()
  if late == "after":
    save_late()
  later = _state(seed=8).replace(step=jnp.asarray(8, jnp.int32))
  assert checkpoint.save(holder, later, ["ours", 8])
  checkpoint.close(holder)
  assert checkpoint.complete_steps(directory) == [7, 8]

  reader = checkpoint.create_manager(directory)
  restored, history = checkpoint.restore_latest(reader, checkpoint.abstract(later))
  _leaves_equal(restored, later)
  assert history == ["ours", 8]
  kept = ocp.CheckpointManager(directory, item_names=("history",)).restore(
      7, args=ocp.args.Composite(history=ocp.args.JsonRestore()))["history"]
  assert kept == (["ours"] if late == "before" else ["theirs"])
  reader.close()
