"""The writing-custom-datasets-dataloaders-and-transforms tutorial: a landmarks Dataset read
from a CSV of file names and coordinates (images as .npy files), `torch.is_tensor(idx)` turned
into a list, samples as dicts of NumPy arrays, callable transform classes (Rescale, RandomCrop
drawing from np.random, ToTensor swapping HWC to CHW with torch.from_numpy) chained by a
Compose, a shuffling DataLoader collating the dicts into batched float64 tensors, then a small
CNN regressing the landmarks from the batches. The faces are synthetic: a bright square whose
corners are the landmarks."""
import csv
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


def write_faces(root, n=24, seed=4):
    rng = np.random.default_rng(seed)
    with open(os.path.join(root, "face_landmarks.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "part_0_x", "part_0_y", "part_1_x", "part_1_y"])
        for i in range(n):
            h, w = rng.integers(20, 28), rng.integers(20, 28)
            image = rng.uniform(0, 0.2, size=(h, w, 3))
            top, left = rng.integers(2, h // 2), rng.integers(2, w // 2)
            size = int(rng.integers(6, 10))
            image[top:top + size, left:left + size] += 0.8
            name = f"face_{i}.npy"
            np.save(os.path.join(root, name), image)
            writer.writerow([name, left, top, left + size, top + size])


class FaceLandmarksDataset(Dataset):
    def __init__(self, csv_file, root_dir, transform=None):
        with open(csv_file) as f:
            self.rows = list(csv.reader(f))[1:]
        self.root_dir = root_dir
        self.transform = transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        if torch.is_tensor(idx):
            idx = idx.tolist()
        row = self.rows[idx]
        image = np.load(os.path.join(self.root_dir, row[0]))
        landmarks = np.array([row[1:]]).astype("float").reshape(-1, 2)
        sample = {"image": image, "landmarks": landmarks}
        if self.transform:
            sample = self.transform(sample)
        return sample


class Rescale:
    def __init__(self, output_size):
        assert isinstance(output_size, (int, tuple))
        self.output_size = output_size

    def __call__(self, sample):
        image, landmarks = sample["image"], sample["landmarks"]
        h, w = image.shape[:2]
        if isinstance(self.output_size, int):
            if h > w:
                new_h, new_w = self.output_size * h / w, self.output_size
            else:
                new_h, new_w = self.output_size, self.output_size * w / h
        else:
            new_h, new_w = self.output_size
        new_h, new_w = int(new_h), int(new_w)
        rows = (np.arange(new_h) * h / new_h).astype(int)      # nearest-neighbour resize
        cols = (np.arange(new_w) * w / new_w).astype(int)
        img = image[rows][:, cols]
        landmarks = landmarks * [new_w / w, new_h / h]
        return {"image": img, "landmarks": landmarks}


class RandomCrop:
    def __init__(self, output_size):
        assert isinstance(output_size, (int, tuple))
        self.output_size = (output_size, output_size) if isinstance(output_size, int) \
            else output_size

    def __call__(self, sample):
        image, landmarks = sample["image"], sample["landmarks"]
        h, w = image.shape[:2]
        new_h, new_w = self.output_size
        top = np.random.randint(0, h - new_h)
        left = np.random.randint(0, w - new_w)
        image = image[top:top + new_h, left:left + new_w]
        return {"image": image, "landmarks": landmarks - [left, top]}


class ToTensor:
    def __call__(self, sample):
        image, landmarks = sample["image"], sample["landmarks"]
        image = image.transpose((2, 0, 1))
        return {"image": torch.from_numpy(image), "landmarks": torch.from_numpy(landmarks)}


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample):
        for t in self.transforms:
            sample = t(sample)
        return sample


class LandmarkNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 5 * 5, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1)).view(-1, 2, 2)


def main(seed=0, compile=False, initial_state=None, epochs=3):
    torch.manual_seed(seed)
    np.random.seed(seed)
    values = {}
    with tempfile.TemporaryDirectory() as root:
        write_faces(root)
        csv_file = os.path.join(root, "face_landmarks.csv")
        plain = FaceLandmarksDataset(csv_file, root)
        values["shapes"] = ";".join(f"{plain[i]['image'].shape}{plain[i]['landmarks'].shape}"
                                    for i in range(3))
        values["by_tensor_index"] = plain[torch.tensor(2)]["landmarks"]
        dataset = FaceLandmarksDataset(csv_file, root, transform=Compose([
            Rescale(24), RandomCrop(20), ToTensor()]))
        sample = dataset[0]
        values["sample_types"] = f"{type(sample['image']).__name__}," \
                                 f"{str(sample['image'].dtype).split('.')[-1]}"
        dataloader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0)
        model = LandmarkNet()
        if initial_state is not None:
            model.load_state_dict(initial_state)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

        def train_step(images, landmarks):
            optimizer.zero_grad()
            loss = F.smooth_l1_loss(model(images), landmarks / 20)
            loss.backward()
            optimizer.step()
            return loss

        if compile:
            train_step = torch.compile(train_step)
        losses, batch_shapes = [], []
        for epoch in range(epochs):
            for i_batch, sample_batched in enumerate(dataloader):
                images, landmarks = sample_batched["image"], sample_batched["landmarks"]
                if epoch == 0 and i_batch < 2:
                    batch_shapes.append(f"{tuple(images.size())}{tuple(landmarks.size())}"
                                        f"{str(landmarks.dtype).split('.')[-1]}")
                losses.append(train_step(images.float(), landmarks.float()).item())
        values["batch_shapes"] = ";".join(batch_shapes)
        values["last_landmarks"] = landmarks
    return {"losses": losses, "values": values, "initial_state": initial}
