"""Instruction counts of a statement, as torch.utils.benchmark's Timer.collect_callgrind: the
statement runs in a child Python under valgrind's callgrind, which counts only while its loop
runs, and callgrind_annotate's per-function counts are read back into FunctionCounts."""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any, Callable, Iterator, NamedTuple

# callgrind's client requests (valgrind/callgrind.h): a tool base of 'C','T', then in order
# DUMP_STATS, ZERO_STATS, TOGGLE_COLLECT, DUMP_STATS_AT, START_INSTRUMENTATION, ...
_CALLGRIND_BASE = (ord("C") << 24) | (ord("T") << 16)
_TOGGLE_COLLECT, _DUMP_STATS_AT, _START_INSTRUMENTATION = 2, 3, 4

# A function `uint64 request(uint64 *args)` in x86-64 machine code: valgrind's client-request
# preamble (four rotations of rdi summing to 128 bits, a no-op natively, then xchg rbx,rbx)
# with rax pointing at the arguments; valgrind answers in rdx, natively rdx stays 0.
_REQUEST_CODE = ("4889f8"                                   # mov rax, rdi
                 "31d2"                                     # xor edx, edx
                 "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol rdi, 3 / 13 / 61 / 51
                 "4887db"                                   # xchg rbx, rbx
                 "4889d0"                                   # mov rax, rdx
                 "c3")                                      # ret

# The child: load the job, run the setup, warm up, then count each labelled loop in its own
# callgrind dump. Instrumentation starts only after the imports, which run many times slower
# instrumented.
_CHILD = """
import ctypes, mmap, pickle, sys
with open(sys.argv[1], "rb") as f:
    job = pickle.load(f)
import kiln
try:
    kiln.set_num_threads(job["num_threads"])
except RuntimeError:            # no threadpoolctl: OMP_NUM_THREADS, set for this process, holds
    pass
scope = {"kiln": kiln, "torch": kiln, "__name__": "__kiln_callgrind__"}
for name, (value_setup, payload) in job["globals"].items():
    exec(value_setup, scope)
    scope[name] = pickle.loads(payload)
exec(job["setup"], scope)
exec(job["loops"], scope)

page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes.fromhex(job["request_code"]))
request_fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)(
    ctypes.addressof(ctypes.c_char.from_buffer(page)))

def request(code, arg=0):
    return request_fn((ctypes.c_uint64 * 6)(job["base"] + code, arg, 0, 0, 0, 0))

scope["_kiln_stmt_loop"](min(job["number"], 10))
request(job["start_instrumentation"])
for label, loop in job["runs"]:
    request(job["toggle_collect"])
    scope[loop](job["number"])
    request(job["toggle_collect"])
    name = ctypes.c_char_p(label.encode())
    request(job["dump_stats_at"], ctypes.cast(name, ctypes.c_void_p).value)
"""


class FunctionCount(NamedTuple):
    count: int
    function: str


@dataclasses.dataclass(repr=False, eq=False, frozen=True)
class FunctionCounts:
    """Instruction counts per function, largest first: indexable like a tuple (a slice gives
    FunctionCounts), summable, and diffable (`a - b`, functions matched by name)."""

    _data: tuple[FunctionCount, ...]
    inclusive: bool
    truncate_rows: bool = True
    _linewidth: int | None = None

    def __iter__(self) -> Iterator[FunctionCount]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, item: Any) -> FunctionCount | FunctionCounts:
        data = self._data[item]
        if isinstance(item, slice):
            return FunctionCounts(data, self.inclusive, truncate_rows=False)
        return data

    def __repr__(self) -> str:
        width = max((len(str(c)) for c, _ in self), default=1)
        name_width = max((self._linewidth or 80) - width - 4, 40)
        lines = []
        for c, fn in self:
            if len(fn) > name_width:
                head = (name_width - 5) // 2
                fn = fn[:head] + " ... " + fn[-(name_width - head - 5):]
            lines.append(f"  {c:>{width}}  {fn}")
        if self.truncate_rows and len(lines) > 18:
            lines = lines[:9] + ["...".rjust(width + 2)] + lines[-9:]
        if not self.inclusive:
            lines += ["", f"Total: {self.sum()}"]
        return "\n".join([object.__repr__(self)] + lines)

    def __add__(self, other: FunctionCounts) -> FunctionCounts:
        return self._merge(other, 1)

    def __sub__(self, other: FunctionCounts) -> FunctionCounts:
        return self._merge(other, -1)

    def __mul__(self, factor: int | float) -> FunctionCounts:
        return _from_dict({fn: int(c * factor) for c, fn in self}, self.inclusive)

    def transform(self, map_fn: Callable[[str], str]) -> FunctionCounts:
        """Rename every function by `map_fn`; functions given one name are added together."""
        counts: dict[str, int] = collections.defaultdict(int)
        for c, fn in self:
            counts[map_fn(fn)] += c
        return _from_dict(counts, self.inclusive)

    def filter(self, filter_fn: Callable[[str], bool]) -> FunctionCounts:
        return FunctionCounts(tuple(fc for fc in self if filter_fn(fc.function)), self.inclusive)

    def sum(self) -> int:
        return sum(c for c, _ in self)

    def denoise(self) -> FunctionCounts:
        """Without CPython's string-keyed dict lookups (name lookups), whose counts jitter
        from run to run: `lookdict_unicode` as torch names it, `unicodekeys_lookup_unicode`
        in CPython 3.11 and later."""
        noisy = ("dictobject.c:lookdict_unicode", "dictobject.c:unicodekeys_lookup_unicode")
        return self.filter(lambda fn: not any(n in fn for n in noisy))

    def _merge(self, other: FunctionCounts, sign: int) -> FunctionCounts:
        if self.inclusive != other.inclusive:
            raise ValueError("FunctionCounts: cannot merge inclusive and exclusive counts")
        counts: dict[str, int] = collections.defaultdict(int)
        for c, fn in self:
            counts[fn] += c
        for c, fn in other:
            counts[fn] += sign * c
        return _from_dict(counts, self.inclusive)


def _from_dict(counts: dict[str, int], inclusive: bool) -> FunctionCounts:
    data = sorted((FunctionCount(c, fn) for fn, c in counts.items() if c), reverse=True)
    return FunctionCounts(tuple(data), inclusive)


@dataclasses.dataclass(repr=False, eq=False, frozen=True)
class CallgrindStats:
    """The counts of one collection: `number_per_run` runs of the statement, and as many of
    `pass` (the baseline: the cost of the loop itself)."""

    task_summary: str
    number_per_run: int
    num_threads: int
    baseline_inclusive_stats: FunctionCounts
    baseline_exclusive_stats: FunctionCounts
    stmt_inclusive_stats: FunctionCounts
    stmt_exclusive_stats: FunctionCounts
    stmt_callgrind_out: str | None

    def __repr__(self) -> str:
        base = self.baseline_exclusive_stats
        threads = f"{self.num_threads} thread" + ("s" if self.num_threads > 1 else "")
        return "\n".join([
            object.__repr__(self), self.task_summary,
            f"  {'':>25}All{'':>10}Noisy symbols removed",
            f"    Instructions: {self.counts():>12}{'':>15}{self.counts(denoise=True):>12}",
            f"    Baseline:     {base.sum():>12}{'':>15}{base.denoise().sum():>12}",
            f"{self.number_per_run} runs per measurement, {threads}"])

    def stats(self, inclusive: bool = False) -> FunctionCounts:
        """Per-function counts; inclusive ones add in what each function's callees ran."""
        return self.stmt_inclusive_stats if inclusive else self.stmt_exclusive_stats

    def counts(self, *, denoise: bool = False) -> int:
        """All the instructions the statement's runs executed."""
        stats = self.stmt_exclusive_stats
        return (stats.denoise() if denoise else stats).sum()

    def delta(self, other: CallgrindStats, inclusive: bool = False) -> FunctionCounts:
        return self.stats(inclusive=inclusive) - other.stats(inclusive=inclusive)

    def as_standardized(self) -> CallgrindStats:
        """Function names without build-directory prefixes and library names, so that counts
        from two builds (or two machines) cancel when diffed."""
        rules = [(re.compile(r"^.+/(Python|Objects|Modules|Include)/"), r"\1/"),
                 (re.compile(r"\s\[.+\]$"), "")]

        def strip(stats: FunctionCounts) -> FunctionCounts:
            for pattern, replacement in rules:
                stats = stats.transform(lambda fn: pattern.sub(replacement, fn))
            return stats
        return dataclasses.replace(
            self, baseline_inclusive_stats=strip(self.baseline_inclusive_stats),
            baseline_exclusive_stats=strip(self.baseline_exclusive_stats),
            stmt_inclusive_stats=strip(self.stmt_inclusive_stats),
            stmt_exclusive_stats=strip(self.stmt_exclusive_stats), stmt_callgrind_out=None)


class CopyIfCallgrind:
    """Marks a Timer global as safe to copy into collect_callgrind's child process (by
    pickle); `setup` is Python the child runs first (imports the value needs to unpickle)."""

    def __init__(self, value: Any, *, setup: str | None = None) -> None:
        self._value, self._setup = value, setup

    @property
    def value(self) -> Any:
        return self._value

    @property
    def setup(self) -> str | None:
        return self._setup

    @staticmethod
    def unwrap_all(globals: dict) -> dict:
        return {k: v.value if isinstance(v, CopyIfCallgrind) else v for k, v in globals.items()}


def _check_platform() -> None:
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise OSError(f"collect_callgrind: could not find `{tool}` on PATH; install "
                          "valgrind to count instructions")
    machine = os.uname().machine if hasattr(os, "uname") else "unknown"
    if sys.platform != "linux" or machine != "x86_64":
        raise OSError(f"collect_callgrind: kiln drives callgrind on x86-64 Linux only, this "
                      f"is {sys.platform} on {machine}")


def _pickled_globals(globals: dict) -> dict[str, tuple[str, bytes]]:
    out = {}
    for name, value in globals.items():
        setup = ""
        if isinstance(value, CopyIfCallgrind):
            setup, value = value.setup or "", value.value
        if getattr(value, "__module__", None) == "__main__" and hasattr(value, "__qualname__"):
            raise ValueError(f"collect_callgrind: global {name!r} is defined in __main__, "
                             "which the callgrind process does not run; define it in `setup` "
                             "or import it from a module there")
        try:
            out[name] = (setup, pickle.dumps(value))
        except Exception as e:
            raise ValueError(f"collect_callgrind: global {name!r} ({type(value).__name__}) "
                             f"cannot be pickled into the callgrind process ({e}); build it "
                             "in `setup` instead") from e
    return out


def _loop_source(name: str, stmt: str) -> str:
    return f"def {name}(_kiln_n):\n    for _ in range(_kiln_n):\n" \
           f"{textwrap.indent(stmt, '        ')}\n"


def _parse_annotate(text: str) -> FunctionCounts:
    """callgrind_annotate's function table: one `count  file:function [object]` a line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"^\s*Ir\s+file:function", line)), None)
    if start is None:
        raise RuntimeError("collect_callgrind: no function table in callgrind_annotate's "
                           f"output:\n{text[:2000]}")
    counts: dict[str, int] = collections.defaultdict(int)
    for line in lines[start + 2:]:
        match = re.match(r"^\s*(-?[\d,]+)\s+(.*\S)\s*$", line)
        if match is None:
            if line.strip():
                break
            continue
        counts[match.group(2)] += int(match.group(1).replace(",", ""))
    return _from_dict(counts, inclusive=False)


def _annotate(path: str, inclusive: bool) -> FunctionCounts:
    # run from the dump's own folder: callgrind_annotate shortens paths under its cwd
    result = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
         "--threshold=100", "--show-percs=no", "--auto=no", path],
        capture_output=True, text=True, cwd=os.path.dirname(path))
    if result.returncode:
        raise RuntimeError(f"collect_callgrind: callgrind_annotate failed:\n{result.stderr}")
    counts = _parse_annotate(result.stdout)
    return FunctionCounts(counts._data, inclusive)


def collect_callgrind(stmt: str, setup: str, globals: dict, task_summary: str, number: int,
                      repeats: int | None, collect_baseline: bool, retain_out_file: bool,
                      num_threads: int) -> CallgrindStats | tuple[CallgrindStats, ...]:
    """Runs `number` runs of `stmt` (and of `pass`, for the baseline) under callgrind in a
    child Python, `repeats` times (one CallgrindStats when None)."""
    _check_platform()
    if not isinstance(stmt, str):
        raise ValueError("collect_callgrind: only a string `stmt` can be counted")
    if number < 1 or (repeats is not None and repeats < 1):
        raise ValueError(f"collect_callgrind: number and repeats must be >= 1, got {number} "
                         f"and {repeats}")
    runs = [("baseline", "_kiln_baseline_loop")] if collect_baseline else []
    runs += [(f"stmt {i}", "_kiln_stmt_loop") for i in range(repeats or 1)]
    job = {"num_threads": num_threads, "globals": _pickled_globals(globals), "setup": setup,
           "loops": _loop_source("_kiln_stmt_loop", stmt)
           + _loop_source("_kiln_baseline_loop", "pass"),
           "request_code": _REQUEST_CODE, "base": _CALLGRIND_BASE, "number": number,
           "toggle_collect": _TOGGLE_COLLECT, "dump_stats_at": _DUMP_STATS_AT,
           "start_instrumentation": _START_INSTRUMENTATION, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="kiln_callgrind_") as work:
        job_path, child_path = os.path.join(work, "job.pkl"), os.path.join(work, "child.py")
        out_path = os.path.join(work, "callgrind.out")
        with open(job_path, "wb") as f:
            pickle.dump(job, f)
        with open(child_path, "w") as f:
            f.write(_CHILD)
        env = dict(os.environ, OMP_NUM_THREADS=str(num_threads),
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_path}",
             "--dump-line=yes", "--dump-instr=no", "--instr-atstart=no",
             "--collect-atstart=no", "--collect-systime=no", sys.executable, child_path,
             job_path], capture_output=True, text=True, env=env, cwd=os.getcwd())
        if result.returncode:
            raise RuntimeError(f"collect_callgrind: the statement failed under valgrind "
                               f"(exit {result.returncode}):\n{result.stderr[-4000:]}")
        counts = []
        for i in range(len(runs)):                    # callgrind numbers its dumps from 1
            path = f"{out_path}.{i + 1}"
            with open(path) as f:
                contents = f.read() if retain_out_file else None
            counts.append((_annotate(path, True), _annotate(path, False), contents))
    empty = FunctionCounts((), inclusive=True), FunctionCounts((), inclusive=False), None
    baseline = counts.pop(0) if collect_baseline else empty
    stats = tuple(CallgrindStats(task_summary, number, num_threads, baseline[0], baseline[1],
                                 inclusive, exclusive, contents)
                  for inclusive, exclusive, contents in counts)
    return stats[0] if repeats is None else stats
