"""torch._higher_order_ops.scan at its torch path; it lives in
kiln.tracer.functional_extra.control_flow."""

from kiln.tracer.functional_extra.control_flow import scan  # noqa: F401

__all__ = ["scan"]
