"""`torch.utils.hooks` for kiln: `RemovableHandle`, what every register_*_hook returns (a
`with` block removes the hook at its end), and `unserializable_hook`."""

from kiln.autograd.graph import RemovableHandle  # noqa: F401

__all__ = ["RemovableHandle", "unserializable_hook", "warn_if_has_hooks"]


def unserializable_hook(f):
    """Mark a tensor hook as one that is not saved with the tensor (PyTorch's marker)."""
    f.__torch_unserializable__ = True
    return f


def warn_if_has_hooks(tensor) -> None:
    """Warn when a tensor being saved has backward hooks, which are not saved with it."""
    import warnings
    hooks = getattr(tensor, "_hooks", None)
    for hook in hooks or ():
        if not getattr(hook, "__torch_unserializable__", False):
            warnings.warn(f"backward hook {hook!r} on tensor will not be serialized.  If this "
                          "is expected, you can decorate the function with "
                          "@kiln.utils.hooks.unserializable_hook to suppress this warning")
