"""PyTorch's CPU random streams: a Mersenne Twister and the ways ATen turns its words into values.

`torch.manual_seed(s)` seeds an MT19937 with the low 32 bits of `s` (the reference
`init_genrand`); every CPU random op then reads 32-bit words (`random()`) or pairs of them
(`random64()`, the first word high) in element order and maps them as ATen's distribution
helpers do. kiln reproduces those maps, so the same seed gives PyTorch's numbers: `rand`,
`uniform_`, `randint`, `random_` and `randperm` exactly, and `normal_`/`randn`, `cauchy_`,
`log_normal_` and `geometric_` to the last bit or two (NumPy's log/sin/cos against the C
library's in float64; PyTorch's AVX2 kernel rounds them in float32).

PyTorch builds with MKL draw `bernoulli_(p)` (dropout) and `exponential_` (multinomial) from
MKL's own generator on Intel CPUs; elsewhere they take the maps below, which kiln always uses.
The words come from NumPy's MT19937, whose state kiln sets itself.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_N = 624
_MASK24, _MASK53 = (1 << 24) - 1, (1 << 53) - 1
# bits of the [0, 1) fraction per floating type (std::numeric_limits<T>::digits)
# (half and bfloat16 draw as float does, then round)
_DIGITS = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}
_CHUNK = 1 << 16


@functools.lru_cache(maxsize=64)
def _key(seed: int) -> np.ndarray:
    """The reference MT19937 state for a 32-bit seed (init_genrand). Read-only and cached:
    seeding again with a seed used before (`manual_seed(0)` in every test) takes no Python loop
    of 623 steps."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, _N):
        prev = key[-1]
        key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    key = np.array(key, dtype=np.uint32)
    key.flags.writeable = False
    return key


def _two_product(a, b):
    """(p, e) with p = fl(a * b) and p + e = a * b exactly (Veltkamp splitting)."""
    p = a * b
    split = 134217729.0                                 # 2^27 + 1
    def halves(v):
        c = split * v
        hi = c - (c - v)
        return hi, v - hi
    ah, al = halves(a)
    bh, bl = halves(np.float64(b))
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _fma(x: np.ndarray, b: float, c: float) -> np.ndarray:
    """x * b + c rounded once (NumPy has no fma): the exact product's two parts, summed with
    the rounding error of the first sum carried."""
    p, e = _two_product(x, b)
    s = p + c
    bb = s - p
    t = (p - (s - bb)) + (c - bb)                       # s + t = p + c exactly
    return s + (t + e)


class TorchStream:
    """One generator's state: the twister, and the cached second normal of a Box-Muller pair
    (ATen keeps it in the generator, so a lone `randn(1)` uses it on the next small draw)."""

    def __init__(self, seed: int):
        self.bits = np.random.MT19937()
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.bits.state = {"bit_generator": "MT19937",
                           "state": {"key": _key(int(seed)), "pos": _N}}
        self.next_normal = None

    # --- words -------------------------------------------------------------------------
    def words(self, n: int) -> np.ndarray:
        """n 32-bit words, as uint64."""
        return self.bits.random_raw(int(n))

    def words64(self, n: int) -> np.ndarray:
        """n 64-bit words, each from two 32-bit ones (the first is the high half)."""
        w = self.words(2 * n)
        return (w[0::2] << np.uint64(32)) | w[1::2]

    # --- floating values ---------------------------------------------------------------
    def fraction(self, n: int, dtype) -> np.ndarray:
        """n uniform [0, 1) values as `uniform_real_distribution<dtype>` makes them (float64)."""
        digits = _DIGITS.get(np.dtype(dtype), 24)
        if digits == 53:
            return (self.words64(n) & np.uint64(_MASK53)).astype(np.float64) * 2.0 ** -53
        return (self.words(n) & np.uint64((1 << digits) - 1)).astype(np.float64) * 2.0 ** -digits

    def fraction32(self, n: int) -> np.ndarray:
        """`fraction(n, float32)` as float32 (24-bit integers times 2^-24: exact in float32)."""
        return (self.words(n) & np.uint64(_MASK24)).astype(np.float32) * np.float32(2.0 ** -24)

    def uniform(self, n: int, dtype, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """`x * (high - low) + low` of the fractions: in double for float32 (exact enough),
        as one fused multiply-add for float64 (ATen's build contracts it), and for the half
        types as one float multiply-add on float bounds, where a value that rounds up to
        `high` becomes `low`, as in ATen (the range stays [low, high))."""
        dtype = np.dtype(dtype)
        if dtype.itemsize == 2:
            lo, hi = np.float32(low), np.float32(high)
            # the product of a 24-bit fraction and a float is exact in double: one rounding
            # of the sum to float, as the contracted multiply-add makes
            wide = self.fraction(n, np.float32) * float(hi - lo) + float(lo)
            out = wide.astype(np.float32).astype(dtype)
            out[out == dtype.type(high)] = dtype.type(low)
            return out
        low, high = float(dtype.type(low)), float(dtype.type(high))    # cast as ATen does
        if dtype == np.float64:
            return _fma(self.fraction(n, dtype), high - low, low)
        out = np.empty(n, dtype=dtype)
        for start in range(0, n, _CHUNK):        # in cache-sized pieces: 3x faster at 100M
            x = self.fraction(min(_CHUNK, n - start), dtype)
            x *= high - low
            x += low
            out[start:start + len(x)] = x
        return out

    def normal(self, n: int, dtype, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """`normal_`: 16 at a time from uniforms when there are at least 16 (the last block
        redrawn when n is not a multiple), else one Box-Muller pair per two values in double."""
        dtype = np.dtype(dtype)
        if n < 16:
            return np.array([self._small_normal() * std + mean for _ in range(n)],
                            dtype=np.float64).astype(dtype)
        work = np.float64 if dtype == np.float64 else np.float32
        whole = n - n % 16

        def uniforms(count):        # half types draw float32's uniforms and compute in float
            return self.fraction(count, np.float64) if work is np.float64 else \
                self.fraction32(count)
        # float and double draw all n uniforms first; the half types only the whole blocks'
        data = uniforms(n if dtype.itemsize > 2 else whole)
        out = np.empty(n, dtype=work)
        self._fill16(data[:whole].reshape(-1, 16), out[:whole].reshape(-1, 16), mean, std)
        if n % 16:
            self._fill16(uniforms(16).reshape(1, 16), out[n - 16:].reshape(1, 16), mean, std)
        return out.astype(dtype)

    @staticmethod
    def _fill16(u, out, mean, std):
        work = u.dtype.type
        u1, u2 = work(1) - u[:, :8], u[:, 8:]
        radius = np.sqrt(work(-2) * np.log(u1))
        theta = (2.0 * math.pi * u2).astype(u.dtype)
        out[:, :8] = radius * np.cos(theta) * work(std) + work(mean)
        out[:, 8:] = radius * np.sin(theta) * work(std) + work(mean)

    def _small_normal(self) -> float:
        if self.next_normal is not None:
            value, self.next_normal = self.next_normal, None
            return value
        u1, u2 = self.fraction(2, np.float64)
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self.next_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def normal_doubles(self, n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """n values of ATen's scalar `normal_distribution<double>` (what log_normal_ draws):
        the cached second value first, then Box-Muller pairs (cos, then sin), the last sin
        cached when n leaves one over."""
        out = np.empty(n, dtype=np.float64)
        used = 0
        if n and self.next_normal is not None:
            out[0], self.next_normal, used = self.next_normal, None, 1
        pairs = (n - used + 1) // 2
        if pairs:
            u = self.fraction(2 * pairs, np.float64)
            radius = np.sqrt(-2.0 * np.log1p(-u[1::2]))
            theta = 2.0 * math.pi * u[0::2]
            both = np.empty(2 * pairs, dtype=np.float64)
            both[0::2], both[1::2] = radius * np.cos(theta), radius * np.sin(theta)
            out[used:] = both[:n - used]
            if (n - used) % 2:
                self.next_normal = float(both[-1])
        return out * std + mean

    def cauchy(self, n: int, dtype, median: float = 0.0, sigma: float = 1.0) -> np.ndarray:
        """`cauchy_`: median + sigma * tan(pi * (u - 1/2)), one uniform double each."""
        u = self.fraction(n, np.float64)
        return (median + sigma * np.tan(math.pi * (u - 0.5))).astype(dtype)

    def log_normal(self, n: int, dtype, mean: float = 1.0, std: float = 2.0) -> np.ndarray:
        """`log_normal_`: exp of ATen's scalar double normals."""
        return np.exp(self.normal_doubles(n, mean, std)).astype(dtype)

    def geometric(self, n: int, dtype, p: float) -> np.ndarray:
        """`geometric_`: trials to the first success, ceil(log(u) / log1p(-p)) for a uniform
        double u."""
        u = self.fraction(n, np.float64)
        with np.errstate(divide="ignore"):
            return np.ceil(np.log(u) / math.log1p(-p)).astype(dtype)

    def exponential(self, n: int, dtype, lambd: float = 1.0) -> np.ndarray:
        return (-1.0 / lambd * np.log1p(-self.fraction(n, np.float64))).astype(dtype)

    def bernoulli_scalar(self, n: int, p: float, dtype) -> np.ndarray:
        """1 where a uniform double is below p (`bernoulli_(p)`, dropout's mask of keeps)."""
        return (self.fraction(n, np.float64) < p).astype(dtype)

    def bernoulli_tensor(self, probs: np.ndarray, dtype) -> np.ndarray:
        """`torch.bernoulli(probs)`: each draw in the probabilities' precision (float32
        probabilities: 24-bit uniforms; float64: 53-bit)."""
        flat = np.ascontiguousarray(probs).reshape(-1)
        precision = np.float64 if flat.dtype == np.float64 else np.float32
        return (self.fraction(flat.size, precision) < flat).astype(dtype).reshape(probs.shape)

    # --- integers ----------------------------------------------------------------------
    def integers(self, n: int, low: int, high: int) -> np.ndarray:
        """`random_(low, high)` / `randint`: a word modulo the range (64-bit words when the
        range needs them), plus low. int64."""
        span = int(high) - int(low)
        words = self.words64(n) if span >= 1 << 32 else self.words(n)
        return (words % np.uint64(span)).astype(np.int64) + np.int64(low)

    def full_range(self, n: int, dtype) -> np.ndarray:
        """`random_()` without bounds: [0, 2^digits] for floats, [0, max] for integers."""
        dtype = np.dtype(dtype)
        if dtype == np.bool_:
            return (self.words(n) & np.uint64(1)).astype(np.bool_)
        if dtype.kind == "f":
            digits = _DIGITS.get(dtype, 24)
            words = self.words64(n) if dtype == np.float64 else self.words(n)
            return (words % np.uint64((1 << digits) + 1)).astype(dtype)
        top = int(np.iinfo(dtype).max) + 1
        words = self.words64(n) if dtype == np.int64 else self.words(n)
        return (words % np.uint64(top)).astype(dtype)

    def permutation(self, n: int) -> np.ndarray:
        """`randperm`: Fisher-Yates from the front, swapping i with i + word % (n - i)."""
        n = int(n)
        order = list(range(n))
        if n > 1:
            words = self.words(n - 1).tolist()
            for i, w in enumerate(words):
                j = i + w % (n - i)
                order[i], order[j] = order[j], order[i]
        return np.array(order, dtype=np.int64)

    # --- state -------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        """The state as bytes: 624 key words, the position, the cached normal."""
        st = self.bits.state["state"]
        cached = 0.0 if self.next_normal is None else self.next_normal
        head = np.concatenate([st["key"].astype("<u4"), np.array([st["pos"]], dtype="<u4")])
        tail = np.array([cached], dtype="<f8")
        flag = np.array([self.next_normal is not None], dtype=np.uint8)
        return np.concatenate([head.view(np.uint8), tail.view(np.uint8), flag])

    def set_state(self, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if data.size != STATE_BYTES:
            raise RuntimeError(f"set_rng_state: expected a uint8 state of {STATE_BYTES} bytes "
                               f"(from get_rng_state), got {data.size}")
        words = data[:4 * (_N + 1)].view("<u4")
        self.bits.state = {"bit_generator": "MT19937",
                           "state": {"key": words[:_N].astype(np.uint32), "pos": int(words[_N])}}
        cached = float(data[4 * (_N + 1):4 * (_N + 1) + 8].view("<f8")[0])
        self.next_normal = cached if data[-1] else None


STATE_BYTES = 4 * (_N + 1) + 8 + 1
