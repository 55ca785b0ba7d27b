"""The IR vocabulary: dtypes, the primitive ops (shape, dtype and gradient rules) and graphs."""
