"""`kiln.jit.annotations`: the typing names TorchScript code imports from torch.jit.annotations.

kiln runs such code as ordinary Python, so these are typing's own; `BroadcastingList2` (an int
or a list of two, in torchvision's ops) is a List.
"""

from typing import Any, Dict, List, Optional, Tuple, Union  # noqa: F401

BroadcastingList1 = BroadcastingList2 = BroadcastingList3 = List

__all__ = ["Any", "BroadcastingList1", "BroadcastingList2", "BroadcastingList3", "Dict", "List",
           "Optional", "Tuple", "Union"]
