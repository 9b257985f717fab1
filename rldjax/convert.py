"""PyTorch ``state_dict`` <-> Flax variables for the published model zoo.

Every zoo leaf layer is named by its PyTorch ``state_dict`` prefix (see
``rldjax.models.layers.Net``), so conversion is by name, with the layout
changes of ARCHITECTURES.md §2.2: conv OIHW -> HWIO, linear [out, in] -> [in,
out], BN weight/bias -> params scale/bias, running_mean/var -> batch_stats
mean/var. ``num_batches_tracked`` entries carry no information (momentum is
fixed) and are accepted and dropped.

Command line: write exported models (model.json + variables.npz, see
rldjax.export) that the trainer loads as teachers::

  python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers   # -> <arch>/export each
  python -m rldjax.convert --arch resnet32x4 ckpt_epoch_240.pth OUTDIR
  python -m rldjax.convert --arch imagenet/ResNet34 resnet34-b627a593.pth OUTDIR
"""
from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import pickle
import re
import tarfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rldjax import models
from rldjax.models.layers import TorchBatchNorm

_BN_KEYS = (("weight", "params", "scale"), ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


def layer_order(tag: str, num_classes: int | None = None, **kwargs) -> list[tuple[str, str, dict]]:
  return list(_layer_order(tag, num_classes, tuple(sorted(kwargs.items()))))


@functools.lru_cache(maxsize=128)
def _layer_order(tag, num_classes, kwargs_items):
  """[(torch prefix, kind, shapes)] in call order, which is the published
  registration order. kind is "conv", "dense" or "bn"; shapes maps each Flax
  parameter name to its shape. Abstract: nothing is computed."""
  module = models.create(tag, num_classes, **dict(kwargs_items))
  size = models.INPUT_SIZE[tag]
  order: list[str] = []

  def record(next_fun, args, call_kwargs, context):
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense, TorchBatchNorm)):
      if mod.name not in order:
        order.append(mod.name)
    return next_fun(*args, **call_kwargs)

  def init():
    with nn.intercept_methods(record):
      return module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)

  variables = jax.eval_shape(init)
  out = []
  for name in order:
    p = variables["params"][name]
    if name in variables.get("batch_stats", {}):
      kind = "bn"
    elif p["kernel"].ndim == 4:
      kind = "conv"
    else:
      kind = "dense"
    out.append((name, kind, {k: tuple(v.shape) for k, v in p.items()}))
  return tuple(out)


def to_torch_state_dict(tag: str, variables: Mapping[str, Any], **kwargs) -> dict[str, np.ndarray]:
  """Flax variables -> an ordered {name: numpy array} in PyTorch layout and
  the published registration order."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  num_classes = _num_classes_of(tag, params)
  state = collections.OrderedDict()
  for name, kind, _ in layer_order(tag, num_classes, **kwargs):
    p = params[name]
    if kind == "bn":
      for torch_key, collection, flax_key in _BN_KEYS:
        source = p if collection == "params" else stats[name]
        state[f"{name}.{torch_key}"] = np.asarray(source[flax_key])
      continue
    kernel = np.asarray(p["kernel"])
    state[f"{name}.weight"] = kernel.transpose(3, 2, 0, 1) if kind == "conv" else kernel.T
    if "bias" in p:
      state[f"{name}.bias"] = np.asarray(p["bias"])
  return state


def from_torch_state_dict(tag: str, state_dict: Mapping[str, Any], num_classes: int | None = None,
                          **kwargs) -> dict[str, dict]:
  """A PyTorch ``state_dict`` (name -> array or tensor) -> ``{"params",
  "batch_stats"}``. Every entry must be consumed: an unknown or missing name,
  or a shape mismatch, raises ``ValueError`` naming the entry."""
  arrays = {k: _to_numpy(v) for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked")}
  if num_classes is None:
    num_classes = _infer_num_classes(tag, arrays)
  params: dict[str, dict] = {}
  stats: dict[str, dict] = {}
  used = set()

  def take(key, shape):
    if key not in arrays:
      raise ValueError(f"state_dict entry {key!r} is missing (model {tag}).")
    value = arrays[key]
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"state_dict entry {key!r} has shape {tuple(value.shape)}, "
                       f"model {tag} expects {tuple(shape)}.")
    used.add(key)
    return np.asarray(value, np.float32)

  for name, kind, shapes in layer_order(tag, num_classes, **kwargs):
    if kind == "bn":
      c = shapes["scale"]
      params[name] = {"scale": take(f"{name}.weight", c), "bias": take(f"{name}.bias", c)}
      stats[name] = {"mean": take(f"{name}.running_mean", c),
                     "var": take(f"{name}.running_var", c)}
      continue
    kshape = shapes["kernel"]
    if kind == "conv":
      torch_shape = (kshape[3], kshape[2], kshape[0], kshape[1])
      entry = {"kernel": take(f"{name}.weight", torch_shape).transpose(2, 3, 1, 0)}
    else:
      entry = {"kernel": take(f"{name}.weight", kshape[::-1]).T}
    if "bias" in shapes:
      entry["bias"] = take(f"{name}.bias", shapes["bias"])
    params[name] = entry
  unknown = [k for k in arrays if k not in used]
  if unknown:
    raise ValueError(f"state_dict entries not in model {tag}: {', '.join(unknown[:10])}"
                     + (" …" if len(unknown) > 10 else ""))
  return {"params": params, "batch_stats": stats}


INSTALL_TORCH = 'pip install -e ".[torch]"'  # the README gives the same command


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(f"reading .pth checkpoints needs PyTorch: {INSTALL_TORCH} (from a "
                      "checkout of rldjax)") from None
  return torch


def _state_dict_of(obj, where: str) -> dict[str, np.ndarray]:
  """The state_dict inside a loaded checkpoint (a ``model`` entry, or bare)."""
  if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where} holds a {type(obj).__name__}, not a state_dict")
  state = collections.OrderedDict()
  for key, value in obj.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if not hasattr(value, "numpy"):
      raise ValueError(f"{where}: entry {key!r} is not a tensor")
    state[key] = value.detach().cpu().numpy()
  return state


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads a published ``.pth`` (a dict with a ``model`` entry, as
  mdistiller saves its teachers, or a bare state_dict, as torchvision's
  weights) with ``torch.load(weights_only=True)``: tensors only, never
  arbitrary pickled objects. Needs the ``torch`` extra."""
  torch = _import_torch()
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  return _state_dict_of(_torch_load(torch, path, path), path)


def _torch_load(torch, source, where: str):
  """``torch.load(source, weights_only=True)``; what it refuses to unpickle is
  a ValueError naming ``where``."""
  try:
    return torch.load(source, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    raise ValueError(f"{where} is not a PyTorch checkpoint of tensors: torch.load(weights_only="
                     "True) refused it (rldjax never unpickles arbitrary objects)") from err
  except (OSError, MemoryError):
    raise
  except Exception as err:  # pylint: disable=broad-except
    # A damaged file makes the unpickler fail in any way (KeyError from its
    # memo, IndexError, struct.error, UnicodeDecodeError, ...).
    raise ValueError(f"{where} cannot be read as a PyTorch checkpoint: torch.load failed with "
                     f"{type(err).__name__}: {_first_line(err)}") from err


# mdistiller's cifar_teachers.tar: <root>/<arch>_vanilla/ckpt_epoch_<N>.pth.
_TAR_TEACHER = re.compile(r"(?:^|/)([^/]+)_vanilla/ckpt_epoch_(\d+)\.pth$")


def teachers_in_tar(path: str) -> dict[str, tuple[str, int]]:
  """{zoo arch: (tar member, epoch)} for every ``<arch>_vanilla/ckpt_epoch_N.pth``
  of a teacher archive, the highest epoch of each arch (the published
  teachers are the last epoch, 240). Archs outside the CIFAR zoo raise."""
  found: dict[str, tuple[str, int]] = {}
  with tarfile.open(path) as tar:
    for member in tar.getmembers():
      match = _TAR_TEACHER.search(member.name)
      if not member.isfile() or not match:
        continue
      arch, epoch = match.group(1), int(match.group(2))
      if f"cifar/{arch}" not in models.tags():
        raise ValueError(f"{path}: {member.name} is a teacher of arch {arch!r}, which is not "
                         f"in the CIFAR zoo")
      if arch not in found or epoch > found[arch][1]:
        found[arch] = (member.name, epoch)
  if not found:
    raise ValueError(f"{path} holds no <arch>_vanilla/ckpt_epoch_<N>.pth teacher checkpoints")
  return found


def convert_teacher_tar(path: str, out_root: str,
                        num_classes: int | None = None) -> dict[str, tuple[str, bool]]:
  """Converts every teacher of a ``cifar_teachers.tar`` into
  ``<out_root>/<arch>/export``; returns {arch: (export directory, written)}.
  Teachers already converted there are left as they are (``written`` False;
  :func:`save_converted`), so a conversion that stopped part-way can be run
  again."""
  from rldjax import export  # pylint: disable=import-outside-toplevel
  torch = _import_torch()
  written = {}
  with tarfile.open(path) as tar:
    for arch, (name, _) in sorted(teachers_in_tar(path).items()):
      data = io.BytesIO(tar.extractfile(name).read())
      where = f"{path}:{name}"
      state = _state_dict_of(_torch_load(torch, data, where), where)
      tag = f"cifar/{arch}"
      variables = from_torch_state_dict(tag, state, num_classes)
      target = os.path.join(out_root, arch, "export")
      written[arch] = (target, save_converted(target, tag, variables))
  return written


def save_converted(directory: str, tag: str, variables) -> bool:
  """Exports ``variables`` of ``tag`` to ``directory``; True when written.

  A directory that already holds this very model (the same tag and every
  array equal: a conversion run again, say after an interrupted one) is left
  as it is (False). One that holds another model, or that is not empty and
  holds no export, raises FileExistsError naming it: nothing is overwritten.
  """
  from rldjax import export  # pylint: disable=import-outside-toplevel
  if os.path.exists(os.path.join(directory, "model.json")):
    try:
      tag_there, _, there = export.load_model(directory)
    except (ValueError, KeyError) as err:  # TeacherError, a damaged model.json
      raise FileExistsError(f"{directory} holds an export that cannot be read "
                            f"({_first_line(err)}); remove it, or choose another output "
                            "directory") from None
    same = tag_there == tag and _same_arrays(there, variables)
    if not same:
      raise FileExistsError(f"{directory} already holds another exported model ({tag_there}); "
                            "remove it, or choose another output directory")
    return False
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} is not empty and holds no exported model; choose an "
                          "empty or new output directory")
  export.save_model(directory, tag, variables)
  return True


def _same_arrays(a, b) -> bool:
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  return flat_a.keys() == flat_b.keys() and all(
      np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])) for k in flat_a)


def _to_numpy(value):
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def classifier_name(tag: str) -> str:
  """The name of the final classifier layer of ``tag``."""
  dense = [name for name, kind, _ in layer_order(tag) if kind == "dense"]
  return dense[-1]


def _infer_num_classes(tag: str, arrays) -> int:
  key = f"{classifier_name(tag)}.bias"
  if key not in arrays:
    raise ValueError(f"state_dict entry {key!r} is missing (model {tag}).")
  return int(arrays[key].shape[0])


def _num_classes_of(tag: str, params) -> int:
  return int(np.shape(params[classifier_name(tag)]["bias"])[0])


def _first_line(err: BaseException) -> str:
  lines = str(err).strip().splitlines()
  return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m rldjax.convert",
      description="Convert published PyTorch zoo checkpoints into exported rldjax models: "
                  "a .pth file (with --arch) into OUT, or a teacher archive such as "
                  "mdistiller's cifar_teachers.tar into OUT/<arch>/export for every teacher.")
  parser.add_argument("--arch", default=None,
                      help="for a .pth file: zoo name (resnet32x4) or tag (cifar/resnet32x4, "
                           "imagenet/ResNet34)")
  parser.add_argument("--num_classes", type=int, default=None)
  parser.add_argument("checkpoint", help="a .pth file, or a .tar of <arch>_vanilla/ckpt_epoch_N.pth")
  parser.add_argument("out", help="export directory (.pth) or root directory (.tar)")
  args = parser.parse_args(argv)
  from rldjax import export  # pylint: disable=import-outside-toplevel
  if not args.out.strip():
    parser.error("out: empty (an unset shell variable?): pass the output directory")
  if not os.path.exists(args.checkpoint):
    parser.error(f"no file at {args.checkpoint}")
  if os.path.isdir(args.checkpoint):
    parser.error(f"{args.checkpoint} is a directory: pass a .pth file or a teacher .tar")
  unreadable = (ValueError, RuntimeError, EOFError, pickle.UnpicklingError, tarfile.TarError)
  if tarfile.is_tarfile(args.checkpoint):
    if args.arch:
      parser.error("--arch is read from the archive's folder names; leave it out for a .tar")
    try:
      written = convert_teacher_tar(args.checkpoint, args.out, args.num_classes)
    except unreadable as err:
      parser.error(f"cannot convert {args.checkpoint}: {_first_line(err)}")
    except OSError as err:
      parser.error(f"cannot write under {args.out}: {_first_line(err)}")
    for arch, (target, new) in written.items():
      print(f"wrote cifar/{arch} to {target}" if new else
            f"{target} already holds this cifar/{arch}: left as it is")
    return
  if args.checkpoint.endswith(".tar"):
    parser.error(f"{args.checkpoint} is not a readable tar archive")
  if not args.arch:
    parser.error("--arch is required for a .pth file")
  tag = args.arch if "/" in args.arch else f"cifar/{args.arch}"
  if tag not in models.tags():
    parser.error(f"unknown --arch {args.arch!r}; known tags: {', '.join(models.tags())}")
  try:
    variables = from_torch_state_dict(tag, load_torch_checkpoint(args.checkpoint),
                                      args.num_classes)
  except unreadable as err:
    parser.error(f"cannot convert {args.checkpoint} as {tag}: {_first_line(err)}")
  try:
    written = save_converted(args.out, tag, variables)
  except OSError as err:
    parser.error(f"cannot write {args.out}: {_first_line(err)}")
  count = _num_classes_of(tag, variables['params'])
  print(f"wrote {tag} ({count} classes) to {args.out}" if written else
        f"{args.out} already holds this {tag} ({count} classes): left as it is")


if __name__ == "__main__":
  main()
