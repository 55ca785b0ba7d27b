"""The pipelining tests' model and data, written once for kiln and for torch (`lib` is the
`kiln` or `torch` module): a 4-block MLP cut into 2 or 4 stages, float64 weights and a batch
of 8 rows drawn with numpy, so both frameworks start from the same numbers (torch sizes its
receive buffers from the first microbatch, so the batch splits evenly: 4 x 2 rows)."""

from __future__ import annotations

import numpy as np

SIZES = (5, 8, 8, 8, 3)     # in, hidden, hidden, hidden, out: one Linear per block
BATCH, N_MICRO, STEPS, LR = 8, 4, 3, 0.1
UNEVEN_BATCH = 10      # 3, 3, 2, 2 rows: kiln sends shapes ahead; torch cannot
SCHEDULES = ("ScheduleGPipe", "Schedule1F1B")
TUPLE = "tuple_ScheduleGPipe"   # tuple_stage's model (2 stages) under ScheduleGPipe


def blocks(lib) -> list:
    """The four blocks, each Linear (+ Tanh except the last), with the shared weights."""
    rng = np.random.default_rng(0)
    out = []
    for k, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        linear = lib.nn.Linear(fan_in, fan_out).double()
        linear.load_state_dict({
            "weight": lib.tensor(rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)),
            "bias": lib.tensor(rng.standard_normal(fan_out) * 0.1)})
        layers = [linear] if k == len(SIZES) - 2 else [linear, lib.nn.Tanh()]
        out.append(lib.nn.Sequential(*layers))
    return out


def stage_module(lib, stage: int, num_stages: int):
    """Stage `stage`'s part of the model: its share of the four blocks, in order."""
    per = len(SIZES) - 1
    chunk = per // num_stages
    return lib.nn.Sequential(*blocks(lib)[stage * chunk:(stage + 1) * chunk])


def tuple_stage(lib, stage: int):
    """A 2-stage model whose activation is a tuple: stage 0 returns (tanh(a(x)), b(x)), stage 1
    takes both, c(h) + skip."""
    rng = np.random.default_rng(1)

    def linear(fan_in, fan_out):
        layer = lib.nn.Linear(fan_in, fan_out).double()
        layer.load_state_dict({
            "weight": lib.tensor(rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)),
            "bias": lib.tensor(rng.standard_normal(fan_out) * 0.1)})
        return layer

    class Split(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = linear(SIZES[0], SIZES[1]), linear(SIZES[0], SIZES[-1])

        def forward(self, x):
            return self.a(x).tanh(), self.b(x)

    class Join(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = linear(SIZES[1], SIZES[-1])

        def forward(self, h, skip):
            return self.c(h) + skip

    modules = Split(), Join()
    return modules[stage]


def traced_model(lib):
    """The four blocks in a ModuleDict (as torch's pipelining tutorial holds its layers) plus
    a skip connection from the input to the output, which pipeline() must carry through every
    stage in between."""
    rng = np.random.default_rng(2)
    skip = lib.nn.Linear(SIZES[0], SIZES[-1]).double()
    skip.load_state_dict({"weight": lib.tensor(rng.standard_normal((SIZES[-1], SIZES[0]))),
                          "bias": lib.tensor(rng.standard_normal(SIZES[-1]))})

    class Net(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = lib.nn.ModuleDict({str(k): b for k, b in enumerate(blocks(lib))})
            self.skip = skip

        def forward(self, x):
            h = x
            for layer in self.layers.values():
                h = layer(h)
            return h + self.skip(x)
    return Net()


def traced_pipe(lib, pipelining, num_stages: int):
    """traced_model cut by pipeline() at the first block of each stage."""
    chunk = (len(SIZES) - 1) // num_stages
    spec = {f"layers.{k * chunk}": pipelining.SplitPoint.BEGINNING for k in range(1, num_stages)}
    x = data(lib, 0)[0]
    pipe = pipelining.pipeline(traced_model(lib), (x[:BATCH // N_MICRO],), split_spec=spec)
    assert pipe.num_stages == num_stages
    return pipe


def data(lib, step: int, batch: int = BATCH) -> tuple:
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((batch, SIZES[0]))
    y = rng.standard_normal((batch, SIZES[-1]))
    return lib.tensor(x), lib.tensor(y)


def train(lib, pipelining, stage_index: int, num_stages: int, schedule: str,
          batch: int = BATCH, group=None) -> dict:
    """STEPS SGD steps of one pipeline stage on `batch` rows (over `group`); what the stage
    saw, as numpy arrays: the last stage's losses and merged outputs, every stage's first
    gradients and final weights; then one forward-only step's output."""
    if schedule == TUPLE:
        module = tuple_stage(lib, stage_index)
    elif schedule.startswith("traced_"):
        pipe = traced_pipe(lib, pipelining, num_stages)
        module = pipe.build_stage(stage_index, lib.device("cpu"), group=group).submod
    else:
        module = stage_module(lib, stage_index, num_stages)
    schedule = schedule.replace(TUPLE, "ScheduleGPipe").replace("traced_", "")
    stage = pipelining.PipelineStage(module, stage_index, num_stages, lib.device("cpu"),
                                     group=group)
    sched = getattr(pipelining, schedule)(stage, N_MICRO, loss_fn=lib.nn.functional.mse_loss)
    opt = lib.optim.SGD(module.parameters(), lr=LR)
    res, last = {}, stage_index == num_stages - 1
    for step in range(STEPS):
        x, y = data(lib, step, batch)
        opt.zero_grad()
        losses = []
        if stage_index == 0:
            out = sched.step(x, target=y if last else None, losses=losses)
        else:
            out = sched.step(target=y if last else None, losses=losses)
        if last:
            res[f"losses{step}"] = np.array([float(v.detach()) for v in losses])
            res[f"output{step}"] = out.detach().numpy()
        if step == 0:
            res.update({f"grad/{k}": p.grad.numpy().copy()
                        for k, p in module.named_parameters()})
        opt.step()
    res.update({f"param/{k}": v.detach().numpy().copy()
                for k, v in module.state_dict().items()})
    infer = getattr(pipelining, schedule)(
        pipelining.PipelineStage(module, stage_index, num_stages, lib.device("cpu"),
                                 group=group), N_MICRO)
    x, _ = data(lib, STEPS, batch)
    out = infer.step(x) if stage_index == 0 else infer.step()
    if last:
        res["infer"] = out.detach().numpy()
    return res


def reference(lib, batch: int, model=None) -> dict:
    """The whole model in one process, trained as the pipeline does: per microbatch
    (tensor_split along dim 0) the mean loss's backward, the summed gradients divided by the
    number of microbatches, then the SGD step. Keys as the last stage saves them, with the
    parameters named by the whole model's block index."""
    model = model or lib.nn.Sequential(*blocks(lib))
    opt = lib.optim.SGD(model.parameters(), lr=LR)
    res = {}
    for step in range(STEPS):
        x, y = data(lib, step, batch)
        opt.zero_grad()
        losses, outs = [], []
        for xm, ym in zip(lib.tensor_split(x, N_MICRO), lib.tensor_split(y, N_MICRO)):
            out = model(xm)
            loss = lib.nn.functional.mse_loss(out, ym)
            loss.backward()
            losses.append(float(loss.detach()))
            outs.append(out.detach())
        for p in model.parameters():
            p.grad.div_(N_MICRO)
        res[f"losses{step}"] = np.array(losses)
        res[f"output{step}"] = lib.cat(outs).numpy()
        if step == 0:
            res.update({f"grad/{k}": p.grad.numpy().copy() for k, p in model.named_parameters()})
        opt.step()
    res.update({f"param/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()})
    with lib.no_grad():
        res["infer"] = model(data(lib, STEPS, batch)[0]).numpy()
    return res


VOCAB, MODEL_DIM, LAYERS = 10, 16, 4


def tutorial_model(lib):
    """torch's pipelining tutorial's Transformer, small: token embedding, four
    TransformerDecoderLayers in a ModuleDict, LayerNorm, output projection; float64, every
    state-dict entry drawn with numpy."""

    class Transformer(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = lib.nn.Embedding(VOCAB, MODEL_DIM)
            self.layers = lib.nn.ModuleDict({str(i): lib.nn.TransformerDecoderLayer(
                MODEL_DIM, 2, dim_feedforward=32, dropout=0.0) for i in range(LAYERS)})
            self.norm = lib.nn.LayerNorm(MODEL_DIM)
            self.output = lib.nn.Linear(MODEL_DIM, VOCAB)

        def forward(self, tokens):
            h = self.tok_embeddings(tokens)
            for layer in self.layers.values():
                h = layer(h, h)
            return self.output(self.norm(h)).clone()

    model = Transformer().double()
    rng = np.random.default_rng(3)
    model.load_state_dict({k: lib.tensor(rng.standard_normal(tuple(v.shape)) * 0.3)
                           for k, v in model.state_dict().items()})
    return model


def tutorial(lib, pipelining, stage_index: int) -> dict:
    """The tutorial's loop on 2 stages cut at layers.2 by pipeline(): STEPS SGD steps with
    ScheduleGPipe and a token-wise cross entropy; the last stage's losses and outputs, every
    stage's final weights."""
    rng = np.random.default_rng(4)
    tokens = lib.tensor(rng.integers(0, VOCAB, (BATCH, 6)))
    target = lib.tensor(rng.integers(0, VOCAB, (BATCH, 6)))
    pipe = pipelining.pipeline(tutorial_model(lib), (tokens[:BATCH // N_MICRO],),
                               split_spec={"layers.2": pipelining.SplitPoint.BEGINNING})
    stage = pipe.build_stage(stage_index, lib.device("cpu"))

    def tokenwise_loss_fn(outputs, targets):
        return lib.nn.functional.cross_entropy(outputs.reshape(-1, VOCAB), targets.reshape(-1))

    schedule = pipelining.ScheduleGPipe(stage, N_MICRO, loss_fn=tokenwise_loss_fn)
    opt = lib.optim.SGD(stage.submod.parameters(), lr=LR)
    res = {}
    for step in range(STEPS):
        opt.zero_grad()
        if stage_index == 0:
            schedule.step(tokens)
        else:
            losses = []
            out = schedule.step(target=target, losses=losses)
            res[f"losses{step}"] = np.array([float(v.detach()) for v in losses])
            res[f"output{step}"] = out.detach().numpy()
        opt.step()
    res.update({f"param/{k}": v.detach().numpy().copy()
                for k, v in stage.submod.named_parameters()})
    return res
