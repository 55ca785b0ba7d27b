"""A character-level LSTM language model trained on the Zen of Python, then sampled from."""

import codecs
import contextlib
import io
import os
import time

from tqdm import tqdm

import kiln as torch
import kiln.nn as nn

SEED = 0
# KILN_EXAMPLE_QUICK=1 (set by the tests) trains for fewer epochs; the loss still falls.
EPOCHS = 6 if os.environ.get("KILN_EXAMPLE_QUICK") else 12
STEPS_PER_EPOCH = 20
SEQ_LEN, BATCH = 48, 32


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> Linear: next-character logits at every position."""

    def __init__(self, vocab_size: int, embed: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def random_batch(data: torch.Tensor) -> tuple:
    """BATCH random windows of the text; targets are the inputs shifted by one character."""
    starts = torch.randint(0, len(data) - SEQ_LEN - 1, (BATCH,))
    offsets = torch.arange(SEQ_LEN + 1)
    windows = data[starts.unsqueeze(1) + offsets]          # (BATCH, SEQ_LEN + 1)
    return windows[:, :-1], windows[:, 1:]


def sample(model: CharLSTM, chars: list, prompt: str, length: int,
           temperature: float = 0.7) -> str:
    """Feed the prompt, then draw one character at a time from the softmax."""
    index = {c: i for i, c in enumerate(chars)}
    model.eval()
    out = list(prompt)
    with torch.no_grad():
        x = torch.tensor([[index[c] for c in prompt]])
        logits, state = model(x)
        for _ in range(length):
            probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1).item()
            out.append(chars[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)


def load_zen() -> str:
    """The Zen of Python: `this` stores it rot13-encoded and prints it on import."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def main() -> None:
    start = time.perf_counter()
    torch.manual_seed(SEED)
    # kiln's matmuls are small; one BLAS thread beats several contending for 2 cores
    torch.set_num_threads(1)
    text = load_zen()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    print(f"text: the Zen of Python, {len(text)} characters, {len(chars)} distinct")

    model = CharLSTM(len(chars))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    losses = []
    for epoch in range(EPOCHS):
        model.train()
        total = 0.0
        for _ in tqdm(range(STEPS_PER_EPOCH), desc=f"epoch {epoch + 1:2d}/{EPOCHS}", leave=False):
            inputs, targets = random_batch(data)
            logits, _ = model(inputs)
            loss = loss_fn(logits.reshape(-1, len(chars)), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
        losses.append(total / STEPS_PER_EPOCH)
        print(f"epoch {epoch + 1:2d}  loss {losses[-1]:.4f}")

    print(f"\nloss fell from {losses[0]:.4f} to {losses[-1]:.4f}")
    print("\nsample:\n" + sample(model, chars, "Beautiful is ", 300))
    print(f"\nwall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
