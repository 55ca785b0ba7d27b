"""The DDP tutorial series (pytorch/examples distributed/ddp-tutorial-series, multigpu_torchrun.py)
in one CPU process: a process group of one (gloo, a HashStore), a Trainer holding a
DistributedDataParallel model and its optimizer, a DataLoader over a DistributedSampler with
set_epoch, snapshots of `model.module.state_dict()` and the epoch, and a second Trainer that
loads the snapshot and resumes from the saved epoch."""
import os
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class MyTrainDataset(Dataset):
    def __init__(self, size):
        self.size = size
        self.data = [(torch.rand(20), torch.rand(1)) for _ in range(size)]

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.data[index]


class Trainer:
    def __init__(self, model, train_data, optimizer, save_every, snapshot_path, losses,
                 compile=False):
        self.gpu_id = 0
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.epochs_run = 0
        self.snapshot_path = snapshot_path
        self.losses = losses
        if os.path.exists(snapshot_path):
            self._load_snapshot(snapshot_path)
        self.model = DDP(self.model)
        self.step = torch.compile(self._run_batch) if compile else self._run_batch

    def _load_snapshot(self, snapshot_path):
        snapshot = torch.load(snapshot_path, map_location="cpu")
        self.model.load_state_dict(snapshot["MODEL_STATE"])
        self.epochs_run = snapshot["EPOCHS_RUN"]

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.mse_loss(output, targets)
        loss.backward()
        self.optimizer.step()
        return loss

    def _run_epoch(self, epoch):
        self.train_data.sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self.losses.append(self.step(source, targets).item())

    def _save_snapshot(self, epoch):
        snapshot = {"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}
        torch.save(snapshot, self.snapshot_path)

    def train(self, max_epochs):
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if self.gpu_id == 0 and epoch % self.save_every == 0:
                self._save_snapshot(epoch)


def load_train_objs():
    train_set = MyTrainDataset(96)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train_set, model, optimizer


def prepare_dataloader(dataset, batch_size):
    return DataLoader(dataset, batch_size=batch_size, pin_memory=False, shuffle=False,
                      sampler=DistributedSampler(dataset))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        dataset, model, optimizer = load_train_objs()
        if initial_state is not None:
            model.load_state_dict(initial_state)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        losses = []
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "snapshot.pt")
            train_data = prepare_dataloader(dataset, 16)
            Trainer(model, train_data, optimizer, 1, path, losses, compile).train(2)
            resumed_model = load_train_objs()[1]
            resumed_opt = torch.optim.SGD(resumed_model.parameters(), lr=0.05, momentum=0.9)
            resumed = Trainer(resumed_model, train_data, resumed_opt, 1, path, losses, compile)
            values = {"resumed_from": resumed.epochs_run,
                      "sampler_order": list(train_data.sampler)[:8]}
            resumed.train(4)
            values["final_weight"] = resumed.model.module[0].weight.detach()
    finally:
        dist.destroy_process_group()
    return {"losses": losses, "values": values, "initial_state": initial}
