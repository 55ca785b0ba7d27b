"""`kiln.nn.utils`: gradient clipping, flattening parameters, weight/spectral normalization,
parametrizations, RNN sequence packing, BatchNorm fusion and (stateless) functional_call."""

from kiln.nn.utils.clip_grad import (  # noqa: F401
    clip_grad_norm_, clip_grad_value_, clip_grad_norm, clip_grads_with_norm_, get_total_norm)
from kiln.nn.utils.convert_parameters import (  # noqa: F401
    parameters_to_vector, vector_to_parameters)
from kiln.nn.utils import rnn, parametrize, parametrizations  # noqa: F401,E402
from kiln.nn.utils.weight_norm_hooks import (  # noqa: F401,E402
    weight_norm, remove_weight_norm, spectral_norm, remove_spectral_norm)
from kiln.nn.utils.fusion import (  # noqa: F401,E402
    fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_eval, fuse_linear_bn_weights)
from kiln.nn.utils.module_init import (  # noqa: F401,E402
    skip_init, convert_conv2d_weight_memory_format, convert_conv3d_weight_memory_format)
from kiln.nn.utils import prune  # noqa: F401,E402
from kiln.nn.utils import stateless  # noqa: F401,E402
