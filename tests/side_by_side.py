"""Running a test's function in several threads at once."""
import threading


def run_in_threads(fn, count: int, on_failure=None) -> list[str]:
  """Calls ``fn(i)`` for i in range(count), each in its own thread, all at
  once; returns the failures as "i: Type: message" strings. ``on_failure()``
  runs after a failure (e.g. to release the other threads' barrier)."""
  failures = []

  def call(i):
    try:
      fn(i)
    except Exception as err:  # pylint: disable=broad-except
      failures.append(f"{i}: {type(err).__name__}: {err}")
      if on_failure is not None:
        on_failure()
  threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return failures
