"""Binary classification of scikit-learn's breast-cancer data with an MLP and BCEWithLogitsLoss."""

import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import kiln as torch
import kiln.nn as nn
from kiln.metrics import accuracy, f1_score, precision, recall
from kiln.utils.data import DataLoader, TensorDataset

SEED = 0
EPOCHS = 30


def load_data():
    """Features standardized with statistics of the training split only; labels 1 = benign."""
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=SEED, stratify=data.target)
    scaler = StandardScaler().fit(x_train)
    as_features = lambda x: torch.tensor(scaler.transform(x).astype(np.float32))
    as_labels = lambda y: torch.tensor(y.astype(np.float32)).unsqueeze(1)
    return as_features(x_train), as_labels(y_train), as_features(x_test), as_labels(y_test)


def print_metrics(title: str, y_true, y_pred, average: str) -> dict:
    scores = {
        "accuracy": accuracy(y_true, y_pred),
        "precision": precision(y_true, y_pred, average=average),
        "recall": recall(y_true, y_pred, average=average),
        "f1": f1_score(y_true, y_pred, average=average),
    }
    print(f"\n{title} ({average} averages for precision/recall/F1)")
    print(f"{'metric':<10} {'value':>7}")
    for name, value in scores.items():
        print(f"{name:<10} {value:>7.4f}")
    return scores


def main() -> None:
    start = time.perf_counter()
    torch.manual_seed(SEED)
    # kiln's matmuls are small; one BLAS thread beats several contending for 2 cores
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_data()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))

    model = nn.Sequential(
        nn.Linear(x_train.shape[1], 32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 1),                      # one logit; the loss applies the sigmoid
    )
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    for epoch in tqdm(range(EPOCHS), desc="training"):
        model.train()
        for features, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(features), labels)
            loss.backward()
            optimizer.step()
        if (epoch + 1) % 5 == 0:
            model.eval()
            with torch.no_grad():
                held_out_loss = loss_fn(model(x_test), y_test).item()
            tqdm.write(f"epoch {epoch + 1:2d}  held-out loss {held_out_loss:.4f}")

    model.eval()
    with torch.no_grad():
        predictions = (model(x_test) > 0).long().squeeze(1)
    print_metrics(f"held-out metrics, {len(y_test)} tumours (positive class: benign)",
                  y_test.squeeze(1).long(), predictions, "binary")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
