"""TensorBoard scalars without TensorFlow (its import costs seconds per launch).

Writes standard event files (``events.out.tfevents.*``: TFRecord-framed
``Event`` protos) with TensorBoard's own record writer; only process 0 writes.
"""
from __future__ import annotations

import os
import socket
import time

import jax


class ScalarWriter:
  """``write(step, {"train/loss": 0.5, ...})``; ``close()`` when done."""

  def __init__(self, logdir: str):
    self._records = None
    if jax.process_index() != 0:
      return
    from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorboard.summary.writer.record_writer import RecordWriter  # pylint: disable=import-outside-toplevel
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._records = RecordWriter(open(os.path.join(logdir, name), "wb"))
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())

  def write(self, step: int, scalars: dict) -> None:
    if self._records is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                              summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    if self._records is not None:
      self._records.flush()

  def close(self) -> None:
    if self._records is not None:
      self._records.close()
      self._records = None
