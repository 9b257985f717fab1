"""experiments.task_graph: dependencies, the worker limit, list order,
failures and malformed graphs."""
import threading
import time

import pytest

from experiments.task_graph import Task, run_graph


def test_one_worker_runs_ready_tasks_in_list_order_after_their_deps():
  order = []
  make = lambda name: (lambda: order.append(name) or name.upper())
  tasks = [Task("c", make("c"), ("a", "b")), Task("a", make("a")), Task("b", make("b"), ("a",)),
           Task("d", make("d"))]
  assert run_graph(tasks, 1) == {"a": "A", "b": "B", "c": "C", "d": "D"}
  assert order == ["a", "b", "c", "d"]  # c waits for b; then c is first in the list


def test_independent_tasks_run_side_by_side_up_to_the_worker_limit():
  both = threading.Barrier(2, timeout=30)  # passes only when two tasks run at once
  running, peak, lock = [0], [0], threading.Lock()

  def task():
    with lock:
      running[0] += 1
      peak[0] = max(peak[0], running[0])
    both.wait()
    time.sleep(0.05)
    with lock:
      running[0] -= 1
  run_graph([Task(f"t{i}", task) for i in range(6)], 2)
  assert peak[0] == 2


def test_a_failure_stops_new_tasks_lets_running_ones_finish_and_is_raised():
  started, finished = [], []
  gate = threading.Event()

  def slow():
    started.append("slow")
    gate.wait(30)
    finished.append("slow")

  def fail():
    started.append("fail")
    gate.set()
    raise KeyError("boom")
  tasks = [Task("slow", slow), Task("fail", fail), Task("later", lambda: started.append("later")),
           Task("after", lambda: started.append("after"), ("slow",))]
  with pytest.raises(KeyError, match="boom"):
    run_graph(tasks, 2)
  assert sorted(started) == ["fail", "slow"] and finished == ["slow"]


def test_tasks_of_one_exclusive_group_never_run_together():
  running, peak, lock = [0], [0], threading.Lock()
  beside = threading.Event()

  def exclusive():
    with lock:
      running[0] += 1
      peak[0] = max(peak[0], running[0])
    assert beside.wait(30)  # a free task runs beside it meanwhile
    with lock:
      running[0] -= 1
  tasks = [Task(f"x{i}", exclusive, exclusive="compile") for i in range(3)]
  tasks.append(Task("free", beside.set))
  run_graph(tasks, 3)
  assert peak[0] == 1


@pytest.mark.parametrize("tasks, workers, message", [
    ([Task("a", int)], 0, "workers: need at least 1"),
    ([Task("a", int), Task("a", int)], 1, r"duplicate names \['a'\]"),
    ([Task("a", int, ("z",))], 1, r"task 'a' depends on unknown tasks \['z'\]"),
    ([Task("a", int, ("b",)), Task("b", int, ("a",)), Task("c", int)], 2,
     r"dependency cycle among \['a', 'b'\]"),
])
def test_malformed_graphs_are_refused(tasks, workers, message):
  with pytest.raises(ValueError, match=message):
    run_graph(tasks, workers)
