"""Independent float64 NumPy references for the distillation losses.

Written directly from the method descriptions (loops and explicit masks, no
shared code with ``rldjax.losses``), so that the JAX kernels can be checked
against something that does not share their vectorisation tricks.
"""
import numpy as np


def log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def softmax(z):
  return np.exp(log_softmax(z))


def kl(p_teacher_logits, q_student_logits):
  """KL(softmax(t) || softmax(s)) over the last axis; classes of teacher
  probability 0 add nothing, and so a row whose teacher logits are all -inf
  (no teacher distribution) is 0."""
  t = np.asarray(p_teacher_logits, np.float64)
  none = np.isneginf(t).all(-1, keepdims=True)
  lt = log_softmax(np.where(none, 0.0, t))
  ls = log_softmax(q_student_logits)
  terms = np.where(none | (np.exp(lt) == 0), 0.0, np.exp(lt) * (lt - ls))
  return terms.sum(-1)


def standardize(z):
  z = np.asarray(z, np.float64)
  return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def kd(s, t, T):
  return kl(t / T, s / T) * T**2


def log_binary(z, c):
  """(log p_c, log(1 - p_c)) of softmax(z) in log space (exact for huge logits)."""
  z = np.asarray(z, np.float64)
  lse = np.logaddexp.reduce(z)
  return z[c] - lse, np.logaddexp.reduce(np.delete(z, c)) - lse


def binary_kl(log_t, log_s):
  """KL of two binary distributions given as (log p, log(1 - p)) pairs."""
  return sum(np.exp(a) * (a - b) for a, b in zip(log_t, log_s) if np.exp(a) > 0)


def dkd_terms(s, t, y, T):
  tckd, nckd = [], []
  for si, ti, yi in zip(np.asarray(s, np.float64), np.asarray(t, np.float64), y):
    tckd.append(binary_kl(log_binary(ti / T, yi), log_binary(si / T, yi)) * T**2)
    keep = np.arange(len(si)) != yi
    nckd.append(kl(ti[keep] / T, si[keep] / T) * T**2)
  return np.array(tckd), np.array(nckd)


def rld_terms(s, t, y, T, alpha_T):
  scd, mcd = [], []
  for si, ti, yi in zip(np.asarray(s, np.float64), np.asarray(t, np.float64), y):
    top = int(np.argmax(ti))
    scd.append(binary_kl(log_binary(ti / alpha_T, top), log_binary(si / alpha_T, yi))
               * alpha_T**2)
    keep = ti < ti[yi]
    mcd.append(kl(ti[keep] / T, si[keep] / T) * T**2 if keep.any() else 0.0)
  return np.array(scd), np.array(mcd)


def swap_kd(s, t, y, T):
  t = np.array(t, np.float64)
  for i, yi in enumerate(y):
    top = int(np.argmax(t[i]))
    t[i, yi], t[i, top] = t[i, top], t[i, yi]
  return kd(s, t, T)


def rc(s, y, T):
  s = np.asarray(s, np.float64)
  target = s.copy()
  for i, yi in enumerate(y):
    target[i, yi] = s[i, yi] + s[i].max()
  return kd(s, target, T)


def ldrld_terms(s, t, T, k, rank_by="student", irw_offset=1.5, erd_scale=2.0,
                erd_rate=0.05):
  local, rntk = [], []
  for si, ti in zip(np.asarray(s, np.float64), np.asarray(t, np.float64)):
    order = np.argsort(-(si if rank_by == "student" else ti), kind="stable")
    top = order[:k]
    total = 0.0
    for i in range(k):
      for j in range(i + 1, k):
        w = erd_scale / (irw_offset + abs(i - j)) * np.exp(-erd_rate * (i + j + 2))
        idx = [top[i], top[j]]
        total += w * kl(ti[idx] / T, si[idx] / T)
    total += kl(ti[top] / T, si[top] / T)
    local.append(total / (k * (k - 1) / 2 + 1) * T**2)
    rest = order[k:]
    rntk.append(kl(ti[rest] / T, si[rest] / T) * T**2)
  return np.array(local), np.array(rntk)


def label_revision(s, t, y, lambda1=4.0, lambda2=1.0, eta=0.8):
  """Batch scalar: CE + lambda1 MSE(logits) on rows the teacher gets right,
  lambda2 MSE(probs, revised teacher probs) on wrong rows (elementwise means)."""
  s = np.asarray(s, np.float64)
  t = np.asarray(t, np.float64)
  y = np.asarray(y)
  right = t.argmax(-1) == y
  total = 0.0
  if right.any():
    total += -log_softmax(s[right])[np.arange(right.sum()), y[right]].mean()
    total += lambda1 * ((s[right] - t[right]) ** 2).mean()
  if (~right).any():
    pt = softmax(t[~right])
    ps = softmax(s[~right])
    yw = y[~right]
    onehot = np.eye(s.shape[-1])[yw]
    beta = eta / (pt.max(-1, keepdims=True) - pt[np.arange(len(yw)), yw][:, None] + 1)
    revised = beta * pt + (1 - beta) * onehot
    total += lambda2 * ((ps - revised) ** 2).mean()
  return total
