"""Independent runs side by side: a dependency graph of tasks on a thread pool.

The demo's ~60 runs are small programs that leave part of a 2-core CPU idle
(``make demo`` one run at a time: 96-145% CPU), and most of them do not
depend on one another: the vanilla students need no teacher, a method's
selection runs need only its compiled programs, its final runs only its
chosen weight. :func:`run_graph` runs such tasks on ``workers`` threads, each
as soon as the tasks it depends on are done. JAX releases the GIL while a
program runs, and a run's result does not depend on what runs beside it
(``tests/test_demo_report.py`` checks one against the same run alone).

Compilations run ``alone``: compiling gains nothing from company (XLA:CPU
already spreads a compilation over the cores, and tracing holds the GIL), and
a run beside one spends a larger share of its time outside its steps (as
little as 72% in steps, against 77-88% beside another run and 83-89% alone:
BENCHMARKS.md), which would blur what the demo measures.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Task:
  """``fn()`` runs once every task named in ``deps`` has returned; an
  ``alone`` task runs with no other task beside it."""
  name: str
  fn: Callable[[], Any]
  deps: tuple = ()
  alone: bool = False


def run_graph(tasks: list[Task], workers: int) -> dict:
  """Runs ``tasks`` on ``workers`` threads; returns ``{name: fn()'s result}``.

  Tasks start in list order among those whose dependencies are done, at most
  ``workers`` at a time (so ``workers=1`` runs them one at a time in a
  dependency-respecting list order). When the first of them is ``alone``,
  nothing else starts until it has run: it waits for the running tasks to
  end, then runs by itself. The first task that raises stops the graph: no
  task starts after it, the running ones finish, then its exception is raised.

  Raises:
    ValueError: ``workers`` < 1, two tasks share a name, a task depends on a
      task not in ``tasks``, or the dependencies form a cycle.
  """
  if workers < 1:
    raise ValueError(f"workers: need at least 1, got {workers}")
  names = [t.name for t in tasks]
  if len(set(names)) != len(names):
    raise ValueError(f"tasks: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
  for t in tasks:
    unknown = [d for d in t.deps if d not in names]
    if unknown:
      raise ValueError(f"task {t.name!r} depends on unknown tasks {unknown}")
  results, waiting, running, error = {}, list(tasks), {}, None
  with cf.ThreadPoolExecutor(workers) as pool:
    while running or (waiting and error is None):
      if error is None:
        for t in [t for t in waiting if all(d in results for d in t.deps)]:
          if len(running) == workers or any(r.alone for r in running.values()):
            break
          if t.alone and running:
            break  # it goes next, by itself
          waiting.remove(t)
          running[pool.submit(t.fn)] = t
        if not running:
          raise ValueError(f"tasks: dependency cycle among {[t.name for t in waiting]}")
      done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
      for future in done:
        task = running.pop(future)
        try:
          results[task.name] = future.result()
        except BaseException as e:  # pylint: disable=broad-except
          error = error or e
  if error is not None:
    raise error
  return results
