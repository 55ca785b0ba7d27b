"""Devices and buffers, eager array backends, kernel compile/cache/launch, the executor."""
