"""Optimizers (`kiln.optim.SGD`, `Adam`, ...) and learning-rate schedules (`lr_scheduler`)."""

from kiln.optim.optimizer import Optimizer
from kiln.optim.sgd import SGD
from kiln.optim.adam import Adam, AdamW
from kiln.optim.rmsprop import RMSprop
from kiln.optim.adagrad import Adagrad

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]

from kiln.optim import lr_scheduler  # noqa: E402,F401
