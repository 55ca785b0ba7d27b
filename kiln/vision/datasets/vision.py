"""VisionDataset: the base of kiln.vision's datasets (root folder, transforms, repr)."""

from __future__ import annotations

import os
from typing import Any, Callable

from kiln.utils.data import Dataset


class StandardTransform:
    """Apply `transform` to the input and `target_transform` to the target."""

    def __init__(self, transform: Callable | None = None,
                 target_transform: Callable | None = None) -> None:
        self.transform = transform
        self.target_transform = target_transform

    def __call__(self, input: Any, target: Any) -> tuple[Any, Any]:
        if self.transform is not None:
            input = self.transform(input)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return input, target

    def __repr__(self) -> str:
        body = [type(self).__name__]
        for head, fn in (("Transform: ", self.transform),
                         ("Target transform: ", self.target_transform)):
            if fn is not None:
                lines = repr(fn).splitlines()
                body += [head + lines[0]] + [" " * len(head) + line for line in lines[1:]]
        return "\n".join(body)


class VisionDataset(Dataset):
    """A dataset under `root` whose items pass through `transform` / `target_transform`, or
    through `transforms` (a callable of both input and target), never both."""

    _repr_indent = 4

    def __init__(self, root: Any = None, transforms: Callable | None = None,
                 transform: Callable | None = None,
                 target_transform: Callable | None = None) -> None:
        if isinstance(root, (str, bytes, os.PathLike)):
            root = os.path.expanduser(root)
        self.root = root
        has_separate = transform is not None or target_transform is not None
        if transforms is not None and has_separate:
            raise ValueError("Only transforms or transform/target_transform can be passed as "
                             "argument")
        self.transform = transform
        self.target_transform = target_transform
        if has_separate:
            transforms = StandardTransform(transform, target_transform)
        self.transforms = transforms

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not define __len__")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"Number of datapoints: {len(self)}"]
        if self.root is not None:
            lines.append(f"Root location: {self.root}")
        lines += [line for line in self.extra_repr().splitlines() if line]
        if self.transforms is not None:
            lines += repr(self.transforms).splitlines()
        body = [" " * self._repr_indent + line for line in lines]
        return "\n".join([f"Dataset {type(self).__name__}"] + body)
