"""Pure, per-example distillation losses.

All losses take logits with any leading dims and a class axis (``axis=-1`` by
default), compute in at least float32, and return one value per example
(``label_revision``, a batch scalar in its published form, is the exception).
A class whose logit is -inf in both the student and the teacher (a padded
vocabulary) is absent: the per-example losses equal those of the logits without
it (to float rounding), value and gradients, ``standardize=True`` included.
A class whose logit is -inf (or -1e9, finfo.min) in the teacher alone, as in
a teacher stored for its top classes only, has teacher probability 0: the
losses are the KLs of the probabilities as computed, and a class set on which
the teacher gives no class a probability adds nothing.
:func:`chunked` computes a per-example loss a chunk of examples at a time, to
bound the memory of large vocabularies. Logits sharded over a mesh of
Explicit axes (the vocabulary too) are computed on Auto axes inside each loss
and keep their sharding (per-example losses: the logits' batch dims). A
traced temperature has a finite gradient, padded vocabularies included.
Padding tokens (labels such as -100) are masked by the caller, with the
labels clamped so that no NaN is computed::

  per_token = jnp.where(labels >= 0, rld(s, t, jnp.maximum(labels, 0)), 0.0)
"""
from rldjax.losses._common import standardize_logits
from rldjax.losses.chunked import chunked
from rldjax.losses.dkd import dkd
from rldjax.losses.kd import kd, rc, swap_kd
from rldjax.losses.ldrld import ldrld, rank_pair_weights
from rldjax.losses.registry import PER_EXAMPLE, get, names
from rldjax.losses.revision import label_revision
from rldjax.losses.rld import rld

__all__ = [
    "PER_EXAMPLE", "chunked", "dkd", "get", "kd", "label_revision", "ldrld", "names",
    "rank_pair_weights", "rc", "rld", "standardize_logits", "swap_kd",
]
