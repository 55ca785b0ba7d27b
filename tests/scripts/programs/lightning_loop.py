"""A Lightning-style training loop without Lightning: a `LightningModule`-like class with
`training_step(batch, batch_idx)` returning the loss and `configure_optimizers` returning an
optimizer and a scheduler dict (interval "step"), driven by a small hand-written `Trainer` that
compiles `training_step`, does the backward / step / zero_grad itself, steps the scheduler per
`interval`, runs `validation_step` under no_grad with the module in eval, and logs with
`self.log`."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class MiniModule(nn.Module):
    """The part of LightningModule the trainer below relies on."""

    def __init__(self):
        super().__init__()
        self.logged = {}

    def log(self, name, value):
        self.logged.setdefault(name, []).append(float(value))


class Classifier(MiniModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Dropout(0.0), nn.Linear(24, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


class Trainer:
    def __init__(self, max_epochs, compile=False):
        self.max_epochs = max_epochs
        self.compile = compile
        self.global_step = 0

    def fit(self, module, train_loader, val_loader):
        config = module.configure_optimizers()
        optimizer = config["optimizer"]
        sched = config["lr_scheduler"]
        step_fn = module.training_step
        if self.compile:
            step_fn = torch.compile(step_fn)
        losses, val = [], []
        for epoch in range(self.max_epochs):
            module.train()
            for batch_idx, batch in enumerate(train_loader):
                loss = step_fn(batch, batch_idx)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if sched["interval"] == "step" and self.global_step % sched["frequency"] == 0:
                    sched["scheduler"].step()
                self.global_step += 1
                losses.append(loss.item())
                module.log("train_loss", loss.detach())
            module.eval()
            with torch.no_grad():
                outs = [module.validation_step(b, i) for i, b in enumerate(val_loader)]
            val.append(float(torch.stack([o[1] for o in outs]).mean()))
            module.log("val_loss", torch.stack([o[0] for o in outs]).mean())
        return losses, val, optimizer


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(5)
    w = rng.normal(size=(8, 3)).astype(np.float32)
    x = rng.normal(size=(96, 8)).astype(np.float32)
    y = (x @ w).argmax(1)
    train = TensorDataset(torch.from_numpy(x[:64]), torch.from_numpy(y[:64]))
    valid = TensorDataset(torch.from_numpy(x[64:]), torch.from_numpy(y[64:]))
    module = Classifier()
    if initial_state is not None:
        module.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = Trainer(max_epochs=3, compile=compile)
    losses, val, optimizer = trainer.fit(module, DataLoader(train, batch_size=16),
                                         DataLoader(valid, batch_size=16))
    values = {"final_weight": module.net[0].weight.detach().clone(),
              "final_bias": module.net[3].bias.detach().clone(),
              "val_accuracy": torch.tensor(val), "lr": optimizer.param_groups[0]["lr"],
              "global_step": trainer.global_step,
              "logged": ",".join(f"{k}:{len(v)}" for k, v in module.logged.items())}
    return {"losses": losses, "values": values, "initial_state": initial}
