"""Optimizers (`kiln.optim.SGD`, `Adam`, ...) and learning-rate schedules (`lr_scheduler`)."""

from kiln.optim.optimizer import Optimizer
from kiln.optim.sgd import SGD
from kiln.optim.adam import Adam, AdamW
from kiln.optim.rmsprop import RMSprop
from kiln.optim.adagrad import Adagrad
from kiln.optim.adadelta import Adadelta
from kiln.optim.adamax import Adamax
from kiln.optim.nadam import NAdam
from kiln.optim.radam import RAdam
from kiln.optim.asgd import ASGD
from kiln.optim.rprop import Rprop
from kiln.optim.lbfgs import LBFGS
from kiln.optim.adafactor import Adafactor
from kiln.optim.muon import Muon
from kiln.optim.sparse_adam import SparseAdam

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
           "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "Adafactor", "Muon",
           "SparseAdam"]

from kiln.optim import lr_scheduler  # noqa: E402,F401
from kiln.optim import swa_utils  # noqa: E402,F401
