"""torch._higher_order_ops.cond at its torch path; it lives in
kiln.tracer.functional_extra.control_flow."""

from kiln.tracer.functional_extra.control_flow import cond  # noqa: F401

__all__ = ["cond"]
