"""`kiln.nn.utils`: gradient clipping and flattening parameters to and from one vector."""

from kiln.nn.utils.clip_grad import clip_grad_norm_, clip_grad_value_, clip_grad_norm  # noqa: F401
from kiln.nn.utils.convert_parameters import (  # noqa: F401
    parameters_to_vector, vector_to_parameters)
from kiln.nn.utils import rnn  # noqa: F401,E402
