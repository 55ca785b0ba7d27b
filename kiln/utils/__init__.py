"""Utilities beside the tensor core: data loading (`kiln.utils.data`)."""

from kiln.utils import data  # noqa: F401
