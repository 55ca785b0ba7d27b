"""`kiln.utils.model_zoo.load_url`: torch.utils.model_zoo's name for load_state_dict_from_url."""

from kiln.hub import load_state_dict_from_url as load_url  # noqa: F401

__all__ = ["load_url"]
