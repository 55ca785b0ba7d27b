"""What each process of an MPI-started `kiln.multiprocessing.spawn` runs:
`mpiexec -n N python -m kiln.multiprocessing._mpi_worker JOB_DIR`.

The process joins MPI, prepares itself as Python's spawn start method does (the parent's
sys.path, argv and working directory; the parent's `__main__` re-imported as `__mp_main__`;
`torch` imported as kiln when the parent runs under `kiln run`),
unpickles (fn, args) from JOB_DIR/job.pkl and calls fn(MPI rank, *args). It leaves its outcome
in JOB_DIR/rank<i> for the parent: "ok", or "raised" with the traceback, after which it aborts
the MPI job so that no other process waits for it forever.

On Linux fn runs in a child process and this one watches it, as `kiln.distributed.rank` does:
a process that calls os._exit(n) or is killed by a signal cannot say so itself, so the watcher
writes "exited" with the exit code (or "signal") before mpiexec stops the other processes.
"""

from __future__ import annotations

import multiprocessing.process
import multiprocessing.spawn
import os
import pickle
import sys
import time
import traceback


def _rank_from_environment() -> int:
    """This process's MPI rank, read from what mpiexec sets (without initializing MPI)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def _write_outcome(job_dir: str, rank: int, status: str, **what) -> None:
    """Write JOB_DIR/rank<i> whole or not at all (the parent may read it at any time)."""
    record = dict(status=status, pid=what.pop("pid", os.getpid()), time=time.time_ns(), **what)
    path = os.path.join(job_dir, f"rank{rank}")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(record, f)
    os.replace(path + ".tmp", path)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def run(job_dir: str, rank: int) -> None:
    """Run fn(rank, *args) and leave the outcome; aborts the MPI job when fn raised."""
    with open(os.path.join(job_dir, f"pid{rank}"), "w") as f:
        f.write(str(os.getpid()))
    # Every process initializes MPI, whatever fn does: MPI_Init waits for all the processes
    # of the job, so a group of some of them (init_process_group(world_size=2) on 2 of 4
    # processes) could not start otherwise
    from mpi4py import MPI
    try:
        with open(os.path.join(job_dir, "preparation.pkl"), "rb") as f:
            preparation = pickle.load(f)
        preparation["name"] = f"SpawnProcess-{rank + 1}"
        if preparation.pop("kiln_as_torch", False):     # the parent runs under `kiln run`
            from kiln.as_torch import install
            install()
        me = multiprocessing.process.current_process()
        me._inheriting = True       # a script without the __main__ guard gets Python's message
        try:
            multiprocessing.spawn.prepare(preparation)
        finally:
            me._inheriting = False
        with open(os.path.join(job_dir, "job.pkl"), "rb") as f:
            fn, args = pickle.load(f)
        fn(rank, *args)
    except KeyboardInterrupt:       # the job was stopped (Ctrl-C): as torch's, not a failure
        pass
    except SystemExit as exc:
        if exc.code not in (None, 0):
            if not isinstance(exc.code, int):
                sys.stderr.write(f"{exc.code}\n")
            _flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)     # the watcher reports
    except BaseException:
        _write_outcome(job_dir, rank, "raised", traceback=traceback.format_exc())
        _flush()
        time.sleep(0.2)     # let mpiexec forward what fn printed before the job is torn down
        MPI.COMM_WORLD.Abort(1)
        os._exit(1)         # if Abort returns (it can in a forked child), end this process
    _write_outcome(job_dir, rank, "ok")


def _watch(job_dir: str, rank: int, child: int) -> int:
    """Wait for the child running fn; write the outcome it could not write itself. A signal
    sent to the job (mpiexec stopping it) is passed on and is not the child's failure."""
    from kiln.distributed.rank import wait_passing_signals
    status, stopped = wait_passing_signals(child)
    if status is None:
        return 1
    code = os.waitstatus_to_exitcode(status)        # negative: killed by that signal
    written = os.path.exists(os.path.join(job_dir, f"rank{rank}"))
    if code != 0 and not written and not stopped:
        _write_outcome(job_dir, rank, "exited", pid=child, exit_code=code)
    return code if code >= 0 else 128 - code


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: mpiexec -n N python -m kiln.multiprocessing._mpi_worker "
                         "JOB_DIR (started by kiln.multiprocessing.spawn)")
    job_dir, rank = sys.argv[1], _rank_from_environment()
    if sys.platform.startswith("linux"):    # elsewhere fn runs in this process
        from kiln.distributed.rank import _die_with_parent
        _flush()
        parent, child = os.getpid(), os.fork()
        if child:
            os._exit(_watch(job_dir, rank, child))
        _die_with_parent(parent)
    run(job_dir, rank)


if __name__ == "__main__":
    main()
