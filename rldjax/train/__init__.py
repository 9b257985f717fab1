"""Training: the published recipes (:func:`objective`, :func:`learning_rate`),
the sharded step, checkpoints and the train-and-evaluate loop."""
from rldjax.train.recipe import Recipe, learning_rate, objective, objective_terms

__all__ = ["Recipe", "learning_rate", "objective", "objective_terms"]
