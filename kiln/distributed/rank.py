"""What each rank runs under `kiln.distributed.run`: torchrun's environment variables set from
MPI's, then the user's script as `__main__`. An exception or a non-zero exit on one rank aborts
every rank (otherwise the others would wait for it in their next collective forever)."""

from __future__ import annotations

import os
import runpy
import sys
import traceback

# (rank, world size, local rank, local world size) as MPICH's Hydra and Open MPI name them
_SOURCES = (("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "OMPI_COMM_WORLD_LOCAL_SIZE"))


def set_environment() -> int:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from the MPI launcher's variables."""
    env = os.environ
    for names in _SOURCES:
        if names[0] in env:
            rank, size = env[names[0]], env.get(names[1], "1")
            env["RANK"], env["WORLD_SIZE"] = rank, size
            env["LOCAL_RANK"] = env.get(names[2], rank)
            env["LOCAL_WORLD_SIZE"] = env.get(names[3], size)
            return int(rank)
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("LOCAL_WORLD_SIZE", "1")
    return int(env["RANK"])


def _abort(rank: int, message: str) -> None:
    sys.stderr.write(f"kiln.distributed.run: rank {rank} failed: {message}; aborting the "
                     "other ranks\n")
    sys.stderr.flush()
    run_dir = os.environ.get("KILN_DISTRIBUTED_RUN_DIR")
    if run_dir and os.path.isdir(run_dir):
        # mpiexec may drop the line above as it tears the job down: the launcher reads this
        with open(os.path.join(run_dir, f"failed.{rank}"), "w") as f:
            f.write(message)
    try:
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)
    except ImportError:
        pass
    os._exit(1)


def main() -> None:
    rank = set_environment()
    run_dir = os.environ.get("KILN_DISTRIBUTED_RUN_DIR")
    if run_dir and os.path.isdir(run_dir):     # lets the launcher name a rank that dies
        with open(os.path.join(run_dir, str(os.getpid())), "w") as f:
            f.write(str(rank))
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m kiln.distributed.rank [-m] script [args...]")
    as_module = sys.argv[1] == "-m"
    target = sys.argv[2] if as_module else sys.argv[1]
    sys.argv = sys.argv[(2 if as_module else 1):]
    try:
        if as_module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            _abort(rank, f"exit status {exc.code}")
        raise
    except BaseException:
        traceback.print_exc()
        _abort(rank, f"{sys.exc_info()[0].__name__}: {sys.exc_info()[1]}")


if __name__ == "__main__":
    main()
