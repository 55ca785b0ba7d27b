"""Knowledge distillation tutorial: a deeper teacher CNN and a light student trained with
cross-entropy, then students trained against the teacher: soft targets (softmax / log_softmax
at temperature T, KL sum scaled by T**2), CosineEmbeddingLoss between hidden representations
(avg_pool1d on the teacher's), and an MSELoss on a regressor's feature map against the
teacher's conv features caught with a forward hook; Adam; synthetic 3x8x8 images."""
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


# Deeper neural network class to be used as teacher
class DeepNN(nn.Module):
    def __init__(self, num_classes=10, dropout=0.1):
        super(DeepNN, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(8, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32, 32),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(32, num_classes)
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# Lightweight neural network class to be used as student
class LightNN(nn.Module):
    def __init__(self, num_classes=10, dropout=0.1):
        super(LightNN, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(4, 4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16, 16),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(16, num_classes)
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class ModifiedDeepNNCosine(DeepNN):
    def forward(self, x):
        x = self.features(x)
        flattened_conv_output = torch.flatten(x, 1)
        x = self.classifier(flattened_conv_output)
        flattened_conv_output_after_pooling = torch.nn.functional.avg_pool1d(
            flattened_conv_output, 2)
        return x, flattened_conv_output_after_pooling


class ModifiedLightNNCosine(LightNN):
    def forward(self, x):
        x = self.features(x)
        flattened_conv_output = torch.flatten(x, 1)
        x = self.classifier(flattened_conv_output)
        return x, flattened_conv_output


class ModifiedLightNNRegressor(LightNN):
    def __init__(self, num_classes=10, dropout=0.1):
        super(ModifiedLightNNRegressor, self).__init__(num_classes, dropout)
        # Include an extra regressor (in our case a conv) to the teacher's channel count
        self.regressor = nn.Sequential(
            nn.Conv2d(4, 8, kernel_size=3, padding=1)
        )

    def forward(self, x):
        x = self.features(x)
        regressor_output = self.regressor(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x, regressor_output


def make_set(n, rng):
    centers = np.random.default_rng(11).normal(size=(10, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = centers[labels] + 0.8 * rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def run_epochs(step, model, train_loader, epochs, losses):
    model.train()
    for epoch in range(epochs):
        running_loss = 0.0
        for inputs, labels in train_loader:
            loss = step(inputs, labels)
            running_loss += loss.item()
            losses.append(loss.item())


def test(model, test_loader, multiple_outputs=False):
    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            outputs = model(inputs)
            if multiple_outputs:
                outputs, _ = outputs    # disregard the hidden representation
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return 100 * correct / total


def main(seed=0, compile=False, initial_state=None, epochs=2, dropout=0.1, T=2,
         soft_target_loss_weight=0.25, ce_loss_weight=0.75):
    rng = np.random.default_rng(seed)
    train_loader = DataLoader(make_set(96, rng), batch_size=32, shuffle=False)
    test_loader = DataLoader(make_set(64, rng), batch_size=32, shuffle=False)
    maybe_compile = torch.compile if compile else (lambda f: f)
    losses = {}

    torch.manual_seed(seed)
    nn_deep = DeepNN(num_classes=10, dropout=dropout)
    # the same seed before each student: the students start from the same weights
    torch.manual_seed(seed + 42)
    nn_light = LightNN(num_classes=10, dropout=dropout)
    torch.manual_seed(seed + 42)
    new_nn_light = LightNN(num_classes=10, dropout=dropout)
    torch.manual_seed(seed + 42)
    modified_light_nn = ModifiedLightNNCosine(num_classes=10, dropout=dropout)
    torch.manual_seed(seed + 42)
    regressor_light_nn = ModifiedLightNNRegressor(num_classes=10, dropout=dropout)
    if initial_state is not None:
        nn_deep.load_state_dict(initial_state["teacher"])
        for student in (nn_light, new_nn_light, modified_light_nn):
            student.load_state_dict(initial_state["student"])
        regressor_light_nn.load_state_dict(initial_state["regressor_student"])
    initial = {"teacher": {k: v.clone() for k, v in nn_deep.state_dict().items()},
               "student": {k: v.clone() for k, v in nn_light.state_dict().items()},
               "regressor_student": {k: v.clone()
                                     for k, v in regressor_light_nn.state_dict().items()}}
    assert torch.norm(new_nn_light.features[0].weight).item() == \
        torch.norm(nn_light.features[0].weight).item()
    n_params = sum(p.numel() for p in nn_deep.parameters()), \
        sum(p.numel() for p in nn_light.parameters())

    # 1. teacher and student alone, cross-entropy
    def ce_step_for(model, learning_rate=0.01):
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.Adam(model.parameters(), lr=learning_rate)

        def train_step(inputs, labels):
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            return loss
        return maybe_compile(train_step)

    losses["teacher"], losses["student_ce"] = [], []
    run_epochs(ce_step_for(nn_deep), nn_deep, train_loader, epochs + 1, losses["teacher"])
    run_epochs(ce_step_for(nn_light), nn_light, train_loader, epochs, losses["student_ce"])
    accuracy = {"teacher": test(nn_deep, test_loader), "student_ce": test(nn_light, test_loader)}

    # 2. soft targets from the teacher's logits
    ce_loss = nn.CrossEntropyLoss()
    optimizer = optim.Adam(new_nn_light.parameters(), lr=0.01)
    nn_deep.eval()  # Teacher set to evaluation mode

    def kd_step(inputs, labels):
        optimizer.zero_grad()
        # Forward pass with the teacher model - do not save gradients here
        with torch.no_grad():
            teacher_logits = nn_deep(inputs)
        student_logits = new_nn_light(inputs)
        # Soften the student logits by applying softmax first and log() second
        soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
        soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
        # KL divergence to the soft targets, scaled by T**2 ("Distilling the knowledge")
        soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) \
            / soft_prob.size()[0] * (T**2)
        label_loss = ce_loss(student_logits, labels)
        loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss
        loss.backward()
        optimizer.step()
        return loss

    losses["student_kd"] = []
    run_epochs(maybe_compile(kd_step), new_nn_light, train_loader, epochs, losses["student_kd"])
    accuracy["student_kd"] = test(new_nn_light, test_loader)

    # 3. cosine loss between the hidden representations
    modified_nn_deep = ModifiedDeepNNCosine(num_classes=10, dropout=dropout)
    modified_nn_deep.load_state_dict(nn_deep.state_dict())
    modified_nn_deep.eval()
    cosine_loss = nn.CosineEmbeddingLoss()
    optimizer_cos = optim.Adam(modified_light_nn.parameters(), lr=0.01)

    def cosine_step(inputs, labels):
        optimizer_cos.zero_grad()
        with torch.no_grad():
            _, teacher_hidden_representation = modified_nn_deep(inputs)
        student_logits, student_hidden_representation = modified_light_nn(inputs)
        # target ones: minimizing the loss raises the cosine similarity
        hidden_rep_loss = cosine_loss(student_hidden_representation,
                                      teacher_hidden_representation,
                                      target=torch.ones(inputs.size(0)))
        label_loss = ce_loss(student_logits, labels)
        loss = 0.25 * hidden_rep_loss + 0.75 * label_loss
        loss.backward()
        optimizer_cos.step()
        return loss

    losses["student_cosine"] = []
    run_epochs(maybe_compile(cosine_step), modified_light_nn, train_loader, epochs,
               losses["student_cosine"])
    accuracy["student_cosine"] = test(modified_light_nn, test_loader, multiple_outputs=True)

    # 4. a regressor matching the teacher's conv features, caught by a forward hook
    teacher_features = {}

    def keep_features(module, inputs, output):
        teacher_features["conv"] = output

    handle = nn_deep.features.register_forward_hook(keep_features)
    mse_loss = nn.MSELoss()
    optimizer_reg = optim.Adam(regressor_light_nn.parameters(), lr=0.01)

    def regressor_step(inputs, labels):
        optimizer_reg.zero_grad()
        with torch.no_grad():
            nn_deep(inputs)
        teacher_feature_map = teacher_features["conv"]
        student_logits, regressor_feature_map = regressor_light_nn(inputs)
        hidden_rep_loss = mse_loss(regressor_feature_map, teacher_feature_map)
        label_loss = ce_loss(student_logits, labels)
        loss = 0.25 * hidden_rep_loss + 0.75 * label_loss
        loss.backward()
        optimizer_reg.step()
        return loss

    losses["student_regressor"] = []
    run_epochs(maybe_compile(regressor_step), regressor_light_nn, train_loader, epochs,
               losses["student_regressor"])
    handle.remove()
    accuracy["student_regressor"] = test(regressor_light_nn, test_loader, multiple_outputs=True)

    flat = [x for phase in ("teacher", "student_ce", "student_kd", "student_cosine",
                            "student_regressor") for x in losses[phase]]
    return {"losses": flat, "phase_losses": losses, "accuracy": accuracy,
            "n_params": n_params, "hooked": "conv" in teacher_features,
            "initial_state": initial}


if __name__ == "__main__":
    print(main()["accuracy"])
