"""Pretrained-weight names (torchvision's `*_Weights` enums) and the refusal to load them:
kiln.vision builds architectures only; it downloads no weights."""

from __future__ import annotations

import enum
from typing import Any


class WeightsEnum(enum.Enum):
    """A named set of pretrained weights (the name only: kiln.vision holds no weights)."""


def _weights_enum(name: str, *members: str) -> type:
    values = {m: f"{name}.{m}" for m in members}
    weights = WeightsEnum(name, values)
    weights.DEFAULT = weights[members[0]]           # torchvision's alias of the best set
    return weights


def _no_pretrained(builder: str, weights: Any, kwargs: dict) -> None:
    """Raise when pretrained weights are asked for (`weights=` or the legacy
    `pretrained=True`); drop a `pretrained=False` the legacy interface allowed."""
    if kwargs.pop("pretrained", False):
        weights = "pretrained=True"
    kwargs.pop("progress", None)
    if weights is not None:
        raise RuntimeError(
            f"{builder}: pretrained weights ({weights}) are not available in kiln.vision, which "
            f"downloads no weights. Build the model with weights=None and load a state_dict "
            f"saved from torchvision instead: model.load_state_dict(converted_state_dict) "
            f"(the parameter names and shapes are torchvision's)")
