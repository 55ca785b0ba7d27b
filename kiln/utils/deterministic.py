"""`torch.utils.deterministic.fill_uninitialized_memory`: whether `empty` & co. fill their
memory under deterministic algorithms. kiln's `empty` always gives zeros, so the setting is
stored and read back and changes nothing."""

fill_uninitialized_memory = True
