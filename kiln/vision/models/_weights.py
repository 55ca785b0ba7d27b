"""Pretrained weights for kiln.vision.models as torchvision 0.28 names them: the `*_Weights`
enums (url, transforms preset, meta), the model registry (`list_models`, `get_model`,
`get_model_weights`, `get_weight`) and the builders' handling of `weights=` / `pretrained=`."""

from __future__ import annotations

import enum
import fnmatch
import functools
import os
import urllib.error
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable
from urllib.parse import urlparse

import kiln
from kiln import hub, nn
from kiln.vision.models._meta import _IMAGENET_CATEGORIES
from kiln.vision.transforms._presets import ImageClassification
from kiln.vision.transforms.functional import InterpolationMode

_MODELS: dict[str, Callable[..., nn.Module]] = {}       # name -> builder
_MODEL_WEIGHTS: dict[str, type] = {}                     # name -> its *_Weights enum


@dataclass(eq=False)
class Weights:
    """One set of pretrained weights: where its file is, the preprocessing it was trained
    with (a callable building the preset), and its metadata (categories, num_params, ...)."""
    url: str
    transforms: Callable
    meta: dict[str, Any]

    def __eq__(self, other: Any) -> bool:
        # partials compare by identity; compare their parts, so that a deep-copied or
        # unpickled enum member still finds its definition (as torchvision's Weights does).
        if not isinstance(other, Weights):
            return NotImplemented
        if self.url != other.url or self.meta != other.meta:
            return False
        a, b = self.transforms, other.transforms
        if isinstance(a, partial) and isinstance(b, partial):
            return a.func == b.func and a.args == b.args and a.keywords == b.keywords
        return a == b


class WeightsEnum(enum.Enum):
    """The parent of every `*_Weights` enum: each member's value is a `Weights`."""

    @classmethod
    def verify(cls, obj: Any) -> Any:
        """`obj` as a member of this enum: None stays None, a string names a member
        ("IMAGENET1K_V1", "DEFAULT" or "ResNet18_Weights.IMAGENET1K_V1")."""
        if obj is None:
            return None
        if type(obj) is str:
            name = obj.replace(cls.__name__ + ".", "")
            if name not in cls.__members__:
                raise ValueError(f"{obj!r} is not a member of {cls.__name__}; the members are "
                                 f"{', '.join(cls.__members__)}")
            return cls[name]
        if not isinstance(obj, cls):
            raise TypeError(f"Invalid Weight class provided; expected {cls.__name__} but "
                            f"received {obj.__class__.__name__}.")
        return obj

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """The state dict from `self.url`, through kiln.hub's cache (`$TORCH_HOME/hub/
        checkpoints`); without a network, the error says where to put the file."""
        name = os.path.basename(urlparse(self.url).path)
        try:
            return hub.load_state_dict_from_url(self.url, *args, **kwargs)
        except urllib.error.URLError as err:
            model_dir = kwargs.get("model_dir") or os.path.join(hub.get_dir(), "checkpoints")
            raise RuntimeError(
                f"{self!r}: could not download {self.url} ({err.reason}). Without a network, "
                f"download the file elsewhere and place it at "
                f"{os.path.join(model_dir, name)} (the cache kiln.hub reads; set TORCH_HOME to "
                f"move it)") from err

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}.{self._name_}"

    @property
    def url(self) -> str:
        return self.value.url

    @property
    def transforms(self) -> Callable:
        return self.value.transforms

    @property
    def meta(self) -> dict[str, Any]:
        return self.value.meta


def _ovewrite_named_param(kwargs: dict[str, Any], param: str, new_value: Any) -> None:
    """Set kwargs[param], refusing a different value the caller passed (torchvision's check
    that, say, num_classes agrees with the weights' categories)."""
    if param in kwargs:
        if kwargs[param] != new_value:
            raise ValueError(f"The parameter '{param}' expected value {new_value} but got "
                             f"{kwargs[param]} instead.")
    else:
        kwargs[param] = new_value


def _load_weights(model: nn.Module, weights: WeightsEnum | None, progress: bool,
                  rename: Callable[[dict], dict] | None = None) -> nn.Module:
    """Load `weights` (when given) into `model`, as torchvision's builders do with
    check_hash=True."""
    if weights is None:
        return model
    state = weights.get_state_dict(progress=progress, check_hash=True)
    if rename is not None:
        state = rename(state)
    # Files saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked`; torch's
    # BatchNorm fills in 0 for such unversioned files, and so does this.
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = kiln.tensor(0)
    model.load_state_dict(state)
    return model


def register_model(name: str, weights_enum: type, legacy: str | None = "IMAGENET1K_V1"
                   ) -> Callable:
    """Register a builder under `name` and give it torchvision's calling conventions:
    `weights` as a member, a member's name or None; the deprecated `pretrained=True` (or a
    positional bool) meaning the `legacy` member, with torchvision's warnings."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        @functools.wraps(fn)
        def builder(*args: Any, **kwargs: Any) -> nn.Module:
            if args:              # builders were positional before torchvision 0.13
                positional = dict(zip(("weights", "progress"), args))
                if len(args) > 2 or set(positional) & set(kwargs):
                    raise TypeError(f"{name}() takes at most 2 positional arguments "
                                    f"(weights, progress)")
                warnings.warn(f"Using {' and '.join(repr(p) for p in positional)} as "
                              f"positional parameter(s) is deprecated since 0.13 and may be "
                              f"removed in the future. Please use keyword parameter(s) "
                              f"instead.")
                if isinstance(positional.get("weights"), bool):
                    kwargs["pretrained"] = positional.pop("weights")
                kwargs.update(positional)
            weights = kwargs.pop("weights", None)
            if "pretrained" in kwargs:
                pretrained = kwargs.pop("pretrained")
                if weights is None:
                    weights = _legacy_weights(name, weights_enum, legacy, pretrained)
            kwargs["weights"] = weights_enum.verify(weights)
            return fn(**kwargs)

        builder.weights_enum = weights_enum
        _MODELS[name] = builder
        _MODEL_WEIGHTS[name] = weights_enum
        return builder

    return wrap


def _legacy_weights(name: str, weights_enum: type, legacy: str | None,
                    pretrained: bool) -> WeightsEnum | None:
    """torchvision's handle_legacy_interface for `pretrained=`: warn, and map True to the
    builder's legacy member (False to None)."""
    warnings.warn("The parameter 'pretrained' is deprecated since 0.13 and may be removed in "
                  "the future, please use 'weights' instead.")
    default = weights_enum[legacy] if (pretrained and legacy) else None
    if pretrained and default is None:
        raise ValueError(f"No weights available for model {name}")
    msg = (f"Arguments other than a weight enum or `None` for 'weights' are deprecated since "
           f"0.13 and may be removed in the future. The current behavior is equivalent to "
           f"passing `weights={default}`.")
    if pretrained:
        msg += (f" You can also use `weights={weights_enum.__name__}.DEFAULT` to get the most "
                f"up-to-date weights.")
    warnings.warn(msg)
    return default


def list_models(module: Any = None, include: str | list[str] | None = None,
                exclude: str | list[str] | None = None) -> list[str]:
    """The registered model names (sorted), optionally only those of `module` (e.g.
    kiln.vision.models), matching an `include` and no `exclude` Unix-shell pattern."""
    names = set(_MODELS)
    if module is not None:
        prefix = module.__name__
        names = {n for n in names if _MODELS[n].__module__.startswith(prefix)}
    if include:
        patterns = [include] if isinstance(include, str) else include
        names = {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}
    if exclude:
        patterns = [exclude] if isinstance(exclude, str) else exclude
        names = {n for n in names if not any(fnmatch.fnmatch(n, p) for p in patterns)}
    return sorted(names)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    name = name.lower()
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name}; kiln.vision.models.list_models() lists "
                         f"the {len(_MODELS)} models")
    return _MODELS[name]


def get_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model `name` with `config` (weights=..., num_classes=...)."""
    return get_model_builder(name)(**config)


def get_model_weights(name: Callable | str) -> type:
    """The `*_Weights` enum of a model, by name or by builder."""
    if isinstance(name, str):
        get_model_builder(name)
        return _MODEL_WEIGHTS[name.lower()]
    enum_ = getattr(name, "weights_enum", None)
    if enum_ is None:
        raise ValueError(f"{name!r} is not a registered kiln.vision model builder")
    return enum_


def get_weight(name: str) -> WeightsEnum:
    """A weights member by its full name, e.g. "ResNet50_Weights.IMAGENET1K_V2"."""
    try:
        enum_name, value_name = name.split(".")
    except ValueError:
        raise ValueError(f"Invalid weight name provided: '{name}'.") from None
    for weights_enum in _MODEL_WEIGHTS.values():
        if weights_enum.__name__ == enum_name:
            return weights_enum[value_name]
    raise ValueError(f"The weight enum '{enum_name}' for the specific method couldn't be "
                     f"retrieved.")


def _classification(crop_size: int, resize_size: int = 256, bicubic: bool = False) -> partial:
    """The ImageClassification preset a weights set was evaluated with."""
    interpolation = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
    return partial(ImageClassification, crop_size=crop_size, resize_size=resize_size,
                   interpolation=interpolation)


def _imagenet_meta(num_params: int, min_size: tuple[int, int], **extra: Any) -> dict[str, Any]:
    return {"num_params": num_params, "min_size": min_size,
            "categories": _IMAGENET_CATEGORIES, **extra}

