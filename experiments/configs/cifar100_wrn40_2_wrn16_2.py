"""CIFAR-100, teacher wrn_40_2 -> student wrn_16_2.

1. The published teacher (mdistiller's cifar_teachers.tar, its last-epoch
   checkpoint wrn_40_2_vanilla/ckpt_epoch_240.pth), converted once:

     python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers

2. Distil with any method; the teacher defaults to
   runs/cifar100/teachers/wrn_40_2/export:

     python -m experiments.train \
         --config=experiments/configs/cifar100_wrn40_2_wrn16_2.py:method=rld,seed=0 \
         --workdir=runs/cifar100/wrn40_2_wrn16_2/rld/seed0

A teacher trained here instead (its last epoch, not the test-selected best):

  python -m experiments.train --config=experiments/configs/cifar100_teacher.py:arch=wrn_40_2 \
      --workdir=runs/cifar100/own_teachers/wrn_40_2
  python -m experiments.train \
      --config=experiments/configs/cifar100_wrn40_2_wrn16_2.py:method=rld,teacher=runs/cifar100/own_teachers/wrn_40_2/export/last \
      --workdir=runs/cifar100/wrn40_2_wrn16_2/rld/seed0

method: vanilla, kd, dkd, rld, ldrld, swap_kd, rc, label_revision; stand=True
applies the published logit-standardisation preset. Recipe:
experiments/configs/cifar100.py.
"""
from experiments.configs import cifar100


def get_config(arg: str = "method=rld"):
  return cifar100.build("wrn40_2_wrn16_2", cifar100.parse(arg, cifar100.PAIR_ARGS))
