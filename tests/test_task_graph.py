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


def test_an_alone_task_waits_for_the_running_ones_and_runs_by_itself():
  active, seen, lock = set(), [], threading.Lock()

  def task(name, seconds=0.05):
    def fn():
      with lock:
        active.add(name)
        seen.append(sorted(active))
      time.sleep(seconds)
      with lock:
        seen.append(sorted(active))
        active.discard(name)
    return fn
  tasks = [Task("a", task("a", 0.3)), Task("solo", task("solo"), alone=True),
           Task("b", task("b")), Task("c", task("c")), Task("solo2", task("solo2"), ("c",), True)]
  run_graph(tasks, 2)
  # a runs; solo is next, so b does not start beside a; solo then runs alone.
  assert seen[:4] == [["a"], ["a"], ["solo"], ["solo"]]
  assert ["solo2"] in seen and all(s == ["solo2"] for s in seen if "solo2" in s)
  assert ["b", "c"] in seen  # the others still run side by side


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
