"""The streaming input pipeline on a prepared JPEG dataset: speed, resume, memory.

  python benchmarks/input_pipeline.py [--data_dir=DIR] [--rounds=3] [--host_threads=N]

Reads ``rldjax_jpeg_images/imagenet_like`` (``rldjax/data/jpeg_images.py``:
2048 training JPEGs of 300–500 pixels a side, ~85 KB each; prepared offline
into ``--data_dir`` the first time, ~25 s; ``--dataset`` picks the small
config instead, for a quick check) through
``rldjax.data.input_pipeline.train_batches``, the path ImageNet takes, with
ImageNet's training preprocessing at ``--image_size``. Each measurement runs
in a process of its own (alternating, ``--rounds`` times), so that its memory
is its own:

* ``epoch``: images/s over one epoch, from the call to its last batch (the
  first batch waits for the shuffle buffer to fill), and the process's peak
  resident memory (``ru_maxrss``), ``--shuffle_buffer`` examples in the buffer;
* ``resume``: seconds until the first batch of an epoch resumed at
  ``--resume_at`` of its steps (what a run restarted after a preemption waits),
  next to ``start``: the same at step 0.

Prints the medians. ``--host_threads`` is ``config.dataset.host_threads``
(default 0: tf.data sizes its thread pool to the host's cores).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def child(args):
  """One measurement in this process; prints a JSON line."""
  from rldjax.data import builders, input_pipeline
  builder = builders.load_builder(args.dataset, args.data_dir)
  steps = input_pipeline.steps_per_epoch(builder, "train", args.batch)
  start_step = int(args.resume_at * steps) if args.child == "resume" else 0
  kwargs = dict(global_batch=args.batch, epoch=1, seed=0, image_size=args.image_size,
                start_step=start_step, shuffle_buffer=args.shuffle_buffer)
  kwargs["host_threads"] = args.host_threads
  t0 = time.perf_counter()
  batches = input_pipeline.train_batches(builder, "train", **kwargs)
  next(batches)
  first = time.perf_counter() - t0
  out = {"first_batch_s": first, "start_step": start_step, "steps": steps}
  if args.child == "epoch":
    count = args.batch
    for batch in batches:
      count += len(batch["label"])
    out["images_per_s"] = count / (time.perf_counter() - t0)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(out))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None,
                      help="where the dataset is (prepared there if absent); default: a "
                           "temporary directory, removed afterwards")
  parser.add_argument("--dataset", default="rldjax_jpeg_images/imagenet_like",
                      choices=("rldjax_jpeg_images/imagenet_like", "rldjax_jpeg_images/small"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--shuffle_buffer", type=int, default=2048)
  parser.add_argument("--resume_at", type=float, default=0.75)
  parser.add_argument("--host_threads", type=int, default=0)
  parser.add_argument("--child", choices=("epoch", "resume", "start"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  for name in ("rounds", "batch", "image_size", "shuffle_buffer"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}: need at least 1, got {getattr(args, name)}")
  if args.host_threads < 0:
    parser.error(f"--host_threads: 0 (the host's cores) or more, got {args.host_threads}")
  if not 0.0 <= args.resume_at < 1.0:
    parser.error(f"--resume_at: a fraction of the epoch in [0, 1), got {args.resume_at}")
  from rldjax import runtime
  runtime.import_tensorflow_without_keras()  # as the launcher
  if args.child:
    child(args)
    return
  from benchmarks.machine import describe
  print(describe())
  with tempfile.TemporaryDirectory() as tmp:
    args.data_dir = args.data_dir or tmp
    from rldjax.data import builders, input_pipeline
    t0 = time.perf_counter()
    builder = builders.load_builder(args.dataset, args.data_dir)
    if input_pipeline.steps_per_epoch(builder, "train", args.batch) < 1:
      parser.error(f"--batch: {args.batch} is more than the {args.dataset} training split "
                   f"holds ({builder.info.splits['train'].num_examples})")
    print(f"dataset {args.dataset} in {args.data_dir} ({time.perf_counter() - t0:.1f} s to open "
          "or prepare)")
    passed = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("child", "rounds")]
    results = {"epoch": [], "resume": [], "start": []}
    for _ in range(args.rounds):
      for kind in results:
        out = subprocess.run([sys.executable, __file__, f"--child={kind}", *passed],
                             capture_output=True, text=True, check=False)
        if out.returncode:
          sys.exit(f"{kind} measurement failed (status {out.returncode}):\n{out.stderr[-3000:]}")
        results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
  med = lambda kind, key: statistics.median(r[key] for r in results[kind])
  steps = results["epoch"][0]["steps"]
  print(f"batch {args.batch}, image size {args.image_size}, shuffle buffer "
        f"{args.shuffle_buffer}, {steps} steps per epoch, medians of {args.rounds} "
        f"(host_threads {args.host_threads})")
  print(f"epoch: {med('epoch', 'images_per_s'):.1f} images/s; "
        f"peak resident memory {med('epoch', 'max_rss_mb'):.0f} MB")
  start, resume = med("start", "first_batch_s"), med("resume", "first_batch_s")
  print(f"first batch: at step 0 {start:.2f} s; resumed at step "
        f"{results['resume'][0]['start_step']} {resume:.2f} s ({resume / start:.2f}x)")


if __name__ == "__main__":
  main()
