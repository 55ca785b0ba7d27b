"""`python -m kiln.distributed.run`: start a training script on N ranks, as torchrun does.

    python -m kiln.distributed.run --nproc-per-node 2 train.py --epochs 3
    python -m kiln.distributed.run --nproc-per-node 4 --nnodes 2 --hostfile hosts train.py

kiln's ranks talk through MPI, so the launcher runs `mpiexec` (the one the `mpich` wheel
installs, else the first on PATH) and each rank sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from MPI's environment before running the script
as `__main__`. A rank that raises or exits non-zero aborts the whole job: the launcher returns
non-zero and says which rank failed and how (an exception, an exit status, or the signal that
killed it). The hostfile is MPICH's (`host:slots` per line).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

_NO_MPIEXEC = ("kiln.distributed.run: no mpiexec found. kiln's ranks talk through MPI: "
               "pip install 'kiln[distributed]' (the mpich wheel ships mpiexec), or install "
               "MPICH/Open MPI so that mpiexec is on PATH, or pass --mpiexec PATH")


def find_mpiexec() -> str | None:
    """The mpiexec next to this Python (the mpich wheel's), else the first on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    prefix = os.path.join(sys.prefix, "bin", "mpiexec")
    if os.access(prefix, os.X_OK):
        return prefix
    return shutil.which("mpiexec")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kiln.distributed.run",
        description="Start a script on several ranks through mpiexec (torchrun's interface).")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1,
                   help="ranks per node (default 1)")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (with --hostfile)")
    p.add_argument("--hostfile", default=None,
                   help="MPICH hostfile (one `host[:slots]` per line); ranks are placed "
                        "--nproc-per-node per host")
    p.add_argument("--master-addr", "--master_addr", default=None,
                   help="accepted for torchrun compatibility; MPI does the rendezvous")
    p.add_argument("--master-port", "--master_port", type=int, default=29500,
                   help="accepted for torchrun compatibility; exported as MASTER_PORT")
    p.add_argument("--standalone", action="store_true", help="accepted (single node)")
    p.add_argument("--node-rank", "--node_rank", type=int, default=0,
                   help="accepted for torchrun compatibility; the hostfile places the ranks")
    p.add_argument("--mpiexec", default=None, help="the mpiexec to use")
    p.add_argument("-m", "--module", action="store_true",
                   help="run the script argument as a module (python -m)")
    p.add_argument("script", help="the training script (or module, with -m)")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    return p.parse_args(argv)


def command(args: argparse.Namespace) -> list[str]:
    """The mpiexec command line that starts the ranks."""
    mpiexec = args.mpiexec or find_mpiexec()
    if mpiexec is None:
        raise SystemExit(_NO_MPIEXEC)
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise SystemExit("kiln.distributed.run: --nproc-per-node and --nnodes must be >= 1")
    total = args.nproc_per_node * args.nnodes
    cmd = [mpiexec, "-n", str(total)]
    if args.hostfile is not None:
        if not os.path.exists(args.hostfile):
            raise SystemExit(f"kiln.distributed.run: hostfile {args.hostfile!r} does not exist")
        cmd += ["-f", args.hostfile, "-ppn", str(args.nproc_per_node)]
    cmd += [sys.executable, "-m", "kiln.distributed.rank"]
    cmd += (["-m"] if args.module else []) + [args.script] + list(args.script_args)
    return cmd


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["KILN_DISTRIBUTED_LAUNCHER"] = "1"
    env.setdefault("MASTER_ADDR", args.master_addr or "127.0.0.1")
    env.setdefault("MASTER_PORT", str(args.master_port))
    # as torchrun does: one thread per rank unless asked otherwise (ranks share the cores)
    env.setdefault("OMP_NUM_THREADS", "1")
    # the ranks import kiln from where this launcher's kiln is, whatever their working dir
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cmd = command(args)
    env = environment(args)
    with tempfile.TemporaryDirectory(prefix="kiln-run-") as pids:
        env["KILN_DISTRIBUTED_RUN_DIR"] = pids      # each rank writes its pid there
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
            failed = []
            for line in proc.stdout:               # echoed as it comes; mpiexec's report of a
                sys.stdout.write(line)             # dead process names its pid, not its rank
                sys.stdout.flush()
                hit = re.search(r"PID (\d+) RUNNING AT", line)
                if hit:
                    failed.append(hit.group(1))
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return 130
        if code != 0:
            ranks, reasons = {}, []
            for name in sorted(os.listdir(pids)):
                with open(os.path.join(pids, name)) as f:
                    text = f.read().strip()
                if name.startswith("failed."):      # what a rank said as it aborted the job
                    reasons.append(f"rank {name[7:]} failed: {text}")
                else:
                    ranks[name] = text
            # what the ranks said comes first: once a rank dies mpiexec kills the others, and
            # under load its report can name one of those instead of the rank that died
            who = ", ".join(f"rank {ranks[p]} (pid {p})" if p in ranks else f"pid {p}"
                            for p in failed)
            said = ("; ".join(reasons) if reasons else
                    (f"mpiexec reported {who}; " if who else "")
                    + "see the failing rank's message above")
            sys.stderr.write(f"kiln.distributed.run: the job failed (mpiexec exit status {code})"
                             f"; {said}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
