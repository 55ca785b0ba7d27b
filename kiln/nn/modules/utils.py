"""`torch.nn.modules.utils` import path: the argument helpers layer code imports."""

from kiln.nn.modules._utils import (  # noqa: F401
    _ntuple, _single, _pair, _triple, _quadruple, _reverse_repeat_tuple,
    consume_prefix_in_state_dict_if_present)
