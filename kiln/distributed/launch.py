"""`python -m kiln.distributed.launch`: PyTorch's older launcher (torch.distributed.launch),
deprecated there in favour of torchrun, kept because many scripts' instructions still say

    python -m torch.distributed.launch --nproc_per_node=2 train.py --epochs 3

It runs kiln.distributed.run with the same options. As torch's, unless `--use-env` (or
`--use_env`) is given each rank's script also gets `--local-rank=N` appended to its arguments
(LOCAL_RANK is set in the environment either way).
"""

from __future__ import annotations

import os
import sys
import warnings

from kiln.distributed import run


def main(argv: list[str] | None = None) -> int:
    warnings.warn("kiln.distributed.launch is deprecated, as torch.distributed.launch is: use "
                  "python -m kiln.distributed.run (torchrun's interface), which sets "
                  "LOCAL_RANK in the environment instead of passing --local-rank",
                  FutureWarning, stacklevel=1)
    argv = list(sys.argv[1:] if argv is None else argv)
    use_env = False
    for flag in ("--use-env", "--use_env"):
        while flag in argv[:_script_at(argv)]:
            argv.remove(flag)
            use_env = True
    if not use_env:
        os.environ["KILN_APPEND_LOCAL_RANK"] = "1"
    try:
        return run.main(argv)
    finally:
        os.environ.pop("KILN_APPEND_LOCAL_RANK", None)


def _script_at(argv: list[str]) -> int:
    """Where the script's name is: the first argument that is not a launcher option."""
    takes_value = {"--nproc-per-node", "--nproc_per_node", "--nnodes", "--hostfile",
                   "--master-addr", "--master_addr", "--master-port", "--master_port",
                   "--mpiexec", "--node_rank", "--node-rank"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-"):
            return i
        i += 2 if a in takes_value else 1
    return len(argv)


if __name__ == "__main__":
    sys.exit(main())
