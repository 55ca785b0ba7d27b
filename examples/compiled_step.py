"""A compiled training step on synthetic data: `kiln dump examples/compiled_step.py` shows it."""

import kiln
import kiln.nn.functional as F

kiln.manual_seed(0)
w1 = (kiln.randn(16, 32) * 0.2).requires_grad_()
b1 = kiln.zeros(32).requires_grad_()
w2 = (kiln.randn(32, 4) * 0.2).requires_grad_()
params = [w1, b1, w2]


@kiln.compile
def train_step(x, y):
    hidden = F.gelu(x @ w1 + b1, approximate="tanh")
    logp = F.log_softmax(hidden @ w2, dim=1)
    loss = -(logp * F.one_hot(y, 4)).sum(1).mean()
    loss.backward()
    with kiln.no_grad():
        for p in params:
            p -= 0.1 * p.grad
            p.grad = None
    return loss


x = kiln.randn(64, 16)
y = (x[:, :4].argmax(1))
for step in range(30):
    loss = train_step(x, y)
    if step % 10 == 0:
        print(f"step {step:2d}  loss {loss.item():.4f}")
print(f"final loss {loss.item():.4f}")
