"""What `sys.getrefcount` reads for an array only kiln's own lists hold: a probe's count, held
the same way, read anew by each executor call instead of a number written into the code.

The interpreter's own share of a count is not fixed: it differs between Python versions, and
within a process once something changes how frames hold their objects (PyTorch 2.13's
TorchDynamo, after an error inside a compiled region, adds one for each call level an object
is passed through). A count compared with a probe's, read by the same expression in a frame
like the caller's, follows such changes; a hard-coded 2 would either stop reusing kept memory
or, on an interpreter counting one lower, reuse memory a caller still holds.
"""

from __future__ import annotations

from sys import getrefcount


def held_refs() -> tuple[int, int]:
    """(the count of `getrefcount(items[k])` for an object only the list `items` holds, that
    of `getrefcount(x)` for one held by a list and by the reading frame's local `x`)."""
    items = [object()]
    in_list = getrefcount(items[0])
    x = items[0]
    return in_list, getrefcount(x)
