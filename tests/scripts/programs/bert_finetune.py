"""A Hugging Face style fine-tuning loop for a tiny BERT-like encoder written by hand: word,
position and token-type embeddings with LayerNorm and dropout, `nn.TransformerEncoderLayer(
batch_first=True, norm_first=True)` layers given a key padding mask built from the attention
mask, an extended additive mask with `masked_fill` for a hand-written attention pooler, [CLS]
pooling with a tanh pooler, `get_linear_schedule_with_warmup` as a `LambdaLR`, AdamW with no
decay on biases and LayerNorm weights, gradient accumulation with `clip_grad_norm_`, and a
`torch.no_grad()` evaluation computing accuracy and F1 by hand. The forward/backward of each
micro-batch is the compiled function (dropout on: the same masks eagerly and compiled)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size, hidden, max_positions, type_vocab=2, dropout=0.1):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)),
                             persistent=False)

    def forward(self, input_ids, token_type_ids=None):
        seq_length = input_ids.size(1)
        position_ids = self.position_ids[:, :seq_length]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                      + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(embeddings))


class TinyBertForSequenceClassification(nn.Module):
    def __init__(self, vocab_size=30, hidden=16, heads=2, layers=1, max_positions=12,
                 num_labels=2):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, hidden, max_positions)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=32, dropout=0.1,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.attn_score = nn.Linear(hidden, 1)
        self.pooler = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, num_labels)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.embeddings(input_ids)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        # attention pooling over the tokens, padding masked out with an additive mask
        scores = self.attn_score(hidden).squeeze(-1)
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        attended = (weights.unsqueeze(-1) * hidden).sum(1)
        pooled = torch.tanh(self.pooler(torch.cat([hidden[:, 0], attended], dim=-1)))
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return loss, logits


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                    last_epoch=-1):
    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step) /
                   float(max(1, num_training_steps - num_warmup_steps)))
    return LambdaLR(optimizer, lr_lambda, last_epoch)


def make_data(rng, n, max_len=10):
    """Sentences of 3..10 tokens ([CLS]=1, words 3..29, [SEP]=2, padding 0); the label is
    whether word 7 appears more often than word 8."""
    ids = np.zeros((n, max_len), dtype=np.int64)
    mask = np.zeros((n, max_len), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        length = rng.integers(3, max_len + 1)
        words = rng.choice([7, 8, 7, 8] + list(range(3, 30)), length - 2)
        ids[i, :length] = [1, *words, 2]
        mask[i, :length] = 1
        labels[i] = int((words == 7).sum() > (words == 8).sum())
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(17)
    train = TensorDataset(*make_data(rng, 64))
    test = TensorDataset(*make_data(rng, 32))
    train_dataloader = DataLoader(train, batch_size=8, shuffle=True)
    eval_dataloader = DataLoader(test, batch_size=16)
    model = TinyBertForSequenceClassification()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    no_decay = ["bias", "LayerNorm.weight", "norm1.weight", "norm2.weight"]
    optimizer_grouped_parameters = [
        {"params": [p for n, p in model.named_parameters()
                    if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters()
                    if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=3e-3, eps=1e-8)
    gradient_accumulation_steps, num_train_epochs = 2, 2
    t_total = len(train_dataloader) // gradient_accumulation_steps * num_train_epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2,
                                                num_training_steps=t_total)

    def training_step(batch):
        model.train()
        inputs = {"input_ids": batch[0], "attention_mask": batch[1], "labels": batch[2]}
        outputs = model(**inputs)
        loss = outputs[0]
        loss = loss / gradient_accumulation_steps
        loss.backward()
        return loss.detach()

    if compile:
        training_step = torch.compile(training_step)
    losses, lrs, global_step, tr_loss = [], [], 0, 0.0
    model.zero_grad()
    for epoch in range(num_train_epochs):
        for step, batch in enumerate(train_dataloader):
            loss = training_step(batch)
            tr_loss += loss.item()
            losses.append(loss.item())
            if (step + 1) % gradient_accumulation_steps == 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                model.zero_grad()
                global_step += 1
                lrs.append(scheduler.get_last_lr()[0])

    preds, out_label_ids, eval_loss, nb_eval_steps = None, None, 0.0, 0
    model.eval()
    for batch in eval_dataloader:
        with torch.no_grad():
            tmp_eval_loss, logits = model(batch[0], batch[1], labels=batch[2])
            eval_loss += tmp_eval_loss.mean().item()
        nb_eval_steps += 1
        if preds is None:
            preds, out_label_ids = logits.detach().cpu().numpy(), batch[2].numpy()
        else:
            preds = np.append(preds, logits.detach().cpu().numpy(), axis=0)
            out_label_ids = np.append(out_label_ids, batch[2].numpy(), axis=0)
    preds = np.argmax(preds, axis=1)
    tp = int(((preds == 1) & (out_label_ids == 1)).sum())
    fp = int(((preds == 1) & (out_label_ids == 0)).sum())
    fn = int(((preds == 0) & (out_label_ids == 1)).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    values = {"eval_loss": torch.tensor(eval_loss / nb_eval_steps),
              "acc": torch.tensor(float((preds == out_label_ids).mean())),
              "f1": torch.tensor(f1), "lrs": torch.tensor(lrs), "global_step": global_step,
              "train_loss": torch.tensor(tr_loss / global_step),
              "classifier": model.classifier.weight.detach().clone(),
              "word_embeddings": model.embeddings.word_embeddings.weight.detach().clone()}
    return {"losses": losses, "values": values, "initial_state": initial}
