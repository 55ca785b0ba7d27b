"""Training steps of real models on the CPU: kiln eager vs kiln compiled vs PyTorch eager (and,
with `--inductor`, torch.compile), side by side in one process, at 1 and 2 threads.

Run: python benchmarks/models_cpu.py [--quick] [--rows cnn28_b16,vae] [--threads 1,2]
     [--repeat N] [--inductor]

Each row is one training step written the way users write it (`loss = ...; opt.zero_grad();
loss.backward(); opt.step(); return loss`). Before timing, a row is checked: a kiln model
stepped eagerly and a copy stepped through `kiln.compile` (the first call traces, the later
ones replay) must give the same losses and parameters. Then the three (four) steps are timed
interleaved, one call of each per round, so a busy machine slows them alike; the table gives
medians and ratios, and the load average at the start and end of the run.

Both libraries' OpenMP threads sleep when idle here (OMP_WAIT_POLICY=PASSIVE unless set): with
one process calling both, PyTorch's threads spinning after its step would otherwise hold the
cores that kiln's next call needs (and the other way round), and 2-thread steps of either
library then ran 5-50x slower than 1-thread ones.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")    # before torch and kiln load OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kiln  # noqa: E402
import kiln.optim  # noqa: E402,F401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- the models
# Each maker takes the library (kiln or torch) and returns (model, optimizer, loss_fn) where
# loss_fn(model, *batch) -> loss; `batch(rng)` makes the data as NumPy arrays.

def cnn28(lib, batch):
    """conv 1->32->64 k3 on 28x28 (conv2's forward GEMM is (batch*576)x288 @ 288x64), max-pool
    4 -> 64x6x6, fc 2304->128->10, Adam (issue 17's CNN)."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.fc1 = nn.Linear(2304, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 4)
            x = F.relu(self.fc1(lib.flatten(x, 1)))
            return self.fc2(x)

    model = Net()
    return model, lib.optim.Adam(model.parameters(), lr=1e-3), \
        lambda m, x, y: F.cross_entropy(m(x), y)


def cnn28_batch(batch):
    return lambda rng: (rng.standard_normal((batch, 1, 28, 28), dtype=np.float32),
                        rng.integers(0, 10, batch))


def digits(lib, batch):
    """The digits CNN of benchmarks/train_cpu.py (conv, batch norm, pooling, dropout) with SGD
    and momentum on 8x8 images (benchmarks/compile_cpu.py's row)."""
    from train_cpu import digits_cnn
    model = digits_cnn(lib)
    return model, lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), \
        lambda m, x, y: lib.nn.functional.cross_entropy(m(x), y)


def vae(lib, batch):
    """The VAE of pytorch/examples (784-400-20, reparameterized with randn_like; BCE + KL),
    Adam."""
    nn, F = lib.nn, lib.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 400)
            self.fc21 = nn.Linear(400, 20)
            self.fc22 = nn.Linear(400, 20)
            self.fc3 = nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)

        def forward(self, x):
            h1 = F.relu(self.fc1(x.view(-1, 784)))
            mu, logvar = self.fc21(h1), self.fc22(h1)
            std = lib.exp(0.5 * logvar)
            z = mu + lib.randn_like(std) * std
            return lib.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss_fn(m, x):
        recon, mu, logvar = m(x)
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        kld = -0.5 * lib.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    model = VAE()
    return model, lib.optim.Adam(model.parameters(), lr=1e-3), loss_fn


def lenet(lib, batch):
    """The LeNet of the 60-minute blitz (32x32x3, conv 6 and 16 k5, fc 400-120-84-10), SGD
    with momentum."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    model = Net()
    crit = nn.CrossEntropyLoss()
    return model, lib.optim.SGD(model.parameters(), lr=0.001, momentum=0.9), \
        lambda m, x, y: crit(m(x), y)


def mlp(lib, batch):
    """MLP 784-512-512-10 with ReLU, Adam."""
    nn = lib.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    return model, lib.optim.Adam(model.parameters(), lr=1e-3), \
        lambda m, x, y: nn.functional.cross_entropy(m(x), y)


VOCAB = 1000


def lstm_lm(lib, batch):
    """A 2-layer LSTM language model (vocabulary 1000, embedding 64, hidden 128, seq 35), as in
    pytorch/examples' word_language_model without dropout; SGD. The hidden state starts at
    zero each step."""
    nn = lib.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(VOCAB, 64)
            self.rnn = nn.LSTM(64, 128, 2)
            self.decoder = nn.Linear(128, VOCAB)

        def forward(self, tokens):
            out, _ = self.rnn(self.encoder(tokens))
            return self.decoder(out)

    def loss_fn(m, tokens, targets):
        return nn.functional.cross_entropy(m(tokens).view(-1, VOCAB), targets.view(-1))

    model = LM()
    return model, lib.optim.SGD(model.parameters(), lr=0.5), loss_fn


def bilstm_nli(lib, batch):
    """An SNLI classifier in pytorch/examples' legacy/snli style (vocabulary 1000, embedding 64,
    a shared bidirectional 2-layer LSTM of hidden 64 encoding premise and hypothesis (seq 16)
    from zero states, the last layer's two final hidden states of each concatenated, an MLP
    256-256-3); Adam."""
    nn = lib.nn

    class NLI(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 64)
            self.rnn = nn.LSTM(64, 64, 2, bidirectional=True)
            self.out = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))

        def encode(self, tokens):
            h0 = c0 = tokens.new_zeros((4, tokens.size(1), 64), dtype=lib.float32)
            _, (ht, _) = self.rnn(self.embed(tokens), (h0, c0))
            return ht[-2:].transpose(0, 1).contiguous().view(tokens.size(1), -1)

        def forward(self, premise, hypothesis):
            return self.out(lib.cat([self.encode(premise), self.encode(hypothesis)], 1))

    model = NLI()
    return model, lib.optim.Adam(model.parameters(), lr=1e-3), \
        lambda m, p, h, y: nn.functional.cross_entropy(m(p, h), y)


def transformer(lib, batch):
    """A 2-layer transformer encoder (d_model 128, 4 heads, feed-forward 512, no dropout,
    batch first) on 64 positions, mean-pooled into a 10-way classifier; Adam."""
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(128, 4, dim_feedforward=512, dropout=0.0,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.encoder(x).mean(1))

    model = Net()
    return model, lib.optim.Adam(model.parameters(), lr=1e-4), \
        lambda m, x, y: nn.functional.cross_entropy(m(x), y)


def _classes(shape, n_classes, batch):
    return lambda rng: (rng.standard_normal((batch,) + shape, dtype=np.float32),
                        rng.integers(0, n_classes, batch))


# name -> (maker, batch size, batch of NumPy arrays from an rng, description)
ROWS = {
    "cnn28_b16": (cnn28, 16, cnn28_batch(16), "CNN 28x28 conv32-64 fc2304, Adam, batch 16"),
    "cnn28_b64": (cnn28, 64, cnn28_batch(64), "CNN 28x28 conv32-64 fc2304, Adam, batch 64"),
    "digits": (digits, 64, _classes((1, 8, 8), 10, 64), "digits CNN 8x8 bn+drop, SGD, b64"),
    "vae": (vae, 128, lambda rng: (rng.random((128, 1, 28, 28), dtype=np.float32),),
            "VAE 784-400-20 BCE+KL, Adam, batch 128"),
    "lenet": (lenet, 4, _classes((3, 32, 32), 10, 4), "LeNet 32x32x3 (blitz), SGD, batch 4"),
    "mlp": (mlp, 64, _classes((784,), 10, 64), "MLP 784-512-512-10, Adam, batch 64"),
    "lstm": (lstm_lm, 20, lambda rng: (rng.integers(0, VOCAB, (35, 20)),
                                       rng.integers(0, VOCAB, (35, 20))),
             "LSTM LM 2x128 emb64 seq35, SGD, batch 20"),
    "bilstm_nli": (bilstm_nli, 32, lambda rng: (rng.integers(0, VOCAB, (16, 32)),
                                                rng.integers(0, VOCAB, (16, 32)),
                                                rng.integers(0, 3, 32)),
                   "BiLSTM NLI 2x64 emb64 seq16 (SNLI), Adam, b32"),
    "transformer": (transformer, 16, _classes((64, 128), 10, 16),
                    "transformer enc 2x d128 h4 seq64, Adam, b16"),
}


# ----------------------------------------------------------------------------- running

def make_step(lib, maker, batch):
    """(model, step) where step(*batch) is one training step as users write it."""
    model, opt, loss_fn = maker(lib, batch)

    def step(*data):
        loss = loss_fn(model, *data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return model, step


def _params(model) -> list:
    return [np.array(p.detach().numpy()) for p in model.parameters()]


def check_row(name: str, steps: int = 4) -> tuple:
    """Step a kiln model eagerly and a copy compiled `steps` times on the same data with the
    same random seeds; the losses and parameters must agree. Returns the eager and compiled
    steps, their data, and the compiled function."""
    maker, batch, make_batch, _ = ROWS[name]
    data = make_batch(np.random.default_rng(0))
    kdata = [kiln.from_numpy(a) for a in data]
    kiln.manual_seed(0)
    eager_model, eager_step = make_step(kiln, maker, batch)
    kiln.manual_seed(0)
    comp_model, comp_fn = make_step(kiln, maker, batch)
    comp_model.load_state_dict(eager_model.state_dict())
    compiled = kiln.compile(comp_fn)
    for i in range(steps):
        kiln.manual_seed(100 + i)
        le = float(eager_step(*kdata))
        kiln.manual_seed(100 + i)
        lc = float(compiled(*kdata))
        if not math.isclose(le, lc, rel_tol=1e-3, abs_tol=1e-4):
            raise AssertionError(f"{name}: step {i}: compiled loss {lc} != eager loss {le}")
    for pe, pc in zip(_params(eager_model), _params(comp_model)):
        np.testing.assert_allclose(pc, pe, rtol=2e-3, atol=2e-4,
                                   err_msg=f"{name}: parameters after {steps} steps")
    if not compiled.programs():
        print(f"  note: {name} did not compile: "
              f"{[e.eager_reason for e in compiled.entries.values()]}")
    return eager_model, eager_step, compiled, kdata, data


def torch_step(name: str, kiln_model, data, inductor: bool):
    """The same row in PyTorch, starting from kiln's weights when the state dicts match."""
    maker, batch, _, _ = ROWS[name]
    model, step = make_step(torch, maker, batch)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v.numpy()))
                               for k, v in kiln_model.state_dict().items()})
    except (RuntimeError, KeyError):
        pass                        # different names: torch's own initialization is as good
    tdata = [torch.from_numpy(a) for a in data]
    if inductor:
        from torch import _dynamo
        _dynamo.config.cache_size_limit = 64
        step = torch.compile(step)
    return step, tdata


def interleaved_ms(fns: list, repeat: int, warmup: int = 3) -> list:
    """Median ms per call of each fn, timed round-robin (one call of each per round)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for r in range(repeat):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (7)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows among {','.join(ROWS)}")
    parser.add_argument("--threads", default="1,2", help="thread counts to run, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per row")
    parser.add_argument("--inductor", action="store_true",
                        help="add a torch.compile column (Inductor compiles for minutes)")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose among {list(ROWS)}")
    repeat = args.repeat or (7 if args.quick else 25)
    threads = [int(t) for t in args.threads.split(",")]
    print(f"models_cpu: {os.cpu_count()} CPUs, load average {_load()} (1/5/15 min) at start; "
          f"{repeat} interleaved rounds per row, medians in ms; ratios > 1: kiln compiled "
          f"faster; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    prepared = {}
    for name in rows:
        t0 = time.perf_counter()
        prepared[name] = check_row(name)
        print(f"  checked {name}: compiled == eager over 4 steps "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    for n in threads:
        kiln.set_num_threads(n)
        torch.set_num_threads(n)
        head = (f"{'training step':44s} {'kiln eager':>10s} {'kiln comp':>10s} "
                f"{'torch':>8s}" + (f" {'inductor':>9s}" if args.inductor else "") +
                f" {'eager/comp':>10s} {'torch/comp':>10s}" +
                (f" {'induct/comp':>11s}" if args.inductor else ""))
        print(f"\n{n} thread{'s' if n > 1 else ''} (kiln.set_num_threads / "
              f"torch.set_num_threads), load average {_load()}")
        print(head)
        print("-" * len(head))
        for name in rows:
            eager_model, eager_step, compiled, kdata, data = prepared[name]
            t_step, tdata = torch_step(name, eager_model, data, False)
            fns = [lambda: eager_step(*kdata), lambda: compiled(*kdata),
                   lambda: t_step(*tdata)]
            if args.inductor:
                i_step, idata = torch_step(name, eager_model, data, True)
                fns.append(lambda: i_step(*idata))
            ms = interleaved_ms(fns, repeat)
            e, c, t = ms[:3]
            line = f"{ROWS[name][3]:44s} {e:10.2f} {c:10.2f} {t:8.2f}"
            if args.inductor:
                line += f" {ms[3]:9.2f}"
            line += f" {e / c:9.2f}x {t / c:9.2f}x"
            if args.inductor:
                line += f" {ms[3] / c:10.2f}x"
            print(line, flush=True)
    print(f"\nload average at end: {_load()}")


if __name__ == "__main__":
    main()
