"""Experiment (kept with its results, not part of the recipe; run from the repository root): a CTC
head with its own transformer layers over the projected frames (residual,
zero-initialised, so step 0 is the shipped head). Best-path WER on the development sets."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgelalm.constants import CTC_HEAD_FILE
from edgelalm.pretrained import default_model_dir
from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.evaluate import score
from edgelalm.training.finetune import load_for_training
from edgelalm.training.model import answer_token_ids
from edgelalm.training.train import best_path_ids


class Body(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, ff: int, conv: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, conv, padding=conv // 2, groups=width) if conv else None
        if self.conv is not None:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, ff, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        for layer in self.layers:
            nn.init.zeros_(layer.self_attn.out_proj.weight)
            nn.init.zeros_(layer.self_attn.out_proj.bias)
            nn.init.zeros_(layer.linear2.weight)
            nn.init.zeros_(layer.linear2.bias)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = x + self.conv(x.transpose(1, 2)).transpose(1, 2) * (~pad)[..., None]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return x


class Head(nn.Module):
    def __init__(
        self, embeddings: torch.Tensor, blank: torch.Tensor, log_scale: torch.Tensor, body: Body, untied: bool = False
    ) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings)
        self.output = nn.Parameter(embeddings.clone()) if untied else None
        self.blank = nn.Parameter(blank.clone())
        self.log_scale = nn.Parameter(log_scale.clone())
        self.body = body

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.body(x, pad)
        vocabulary = torch.cat([self.blank[None], self.embeddings if self.output is None else self.output])
        cosine = nn.functional.normalize(x, dim=-1) @ nn.functional.normalize(vocabulary, dim=-1).T
        return (cosine * self.log_scale.exp()).log_softmax(-1)


def batches(counts: np.ndarray, frames_per_batch: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(counts)), key=lambda i: (counts[i], rng.random()))
    out, current, longest = [], [], 0
    for index in order:
        longest2 = max(longest, counts[index])
        if current and longest2 * (len(current) + 1) > frames_per_batch:
            out.append(current)
            current, longest2 = [], counts[index]
        current.append(index)
        longest = longest2
    if current:
        out.append(current)
    rng.shuffle(out)
    return out


def padded(projector, data: EncodedDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [torch.from_numpy(np.asarray(data[i][0], dtype=np.float32)) for i in indices]
    lengths = torch.tensor([len(r) for r in rows])
    x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
    with torch.no_grad():
        x = projector(x)
    pad = torch.arange(x.shape[1])[None] >= lengths[:, None]
    return x, pad, lengths


def evaluate(head: Head, projector, tokenizer, data: EncodedDataset, count: int) -> float:
    head.eval()
    refs, hyps = [], []
    with torch.no_grad():
        for start in range(0, min(count, len(data)), 16):
            indices = list(range(start, min(start + 16, count, len(data))))
            x, pad, lengths = padded(projector, data, indices)
            log_probs = head(x, pad)
            for row, index in enumerate(indices):
                refs.append(data[index][1])
                hyps.append(tokenizer.decode(best_path_ids(log_probs[row, : lengths[row]])).strip())
    head.train()
    return round(100 * score(refs, hyps, 0, 1.0).wer, 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", default="data3/train-seed23")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ff", type=int, default=1536)
    parser.add_argument("--conv", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--frames-per-batch", type=int, default=6000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-count", type=int, default=200)
    parser.add_argument("--untied", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    model_dir = default_model_dir()
    model, processor = load_for_training(model_dir, "cpu")
    tokenizer = processor.tokenizer
    projector = model.model.multi_modal_projector.eval()
    embeddings = model.get_input_embeddings().weight.detach().float()
    stored = load_file(str(model_dir / CTC_HEAD_FILE))
    width = embeddings.shape[1]
    head = Head(
        embeddings,
        stored["blank"].float(),
        stored["log_scale"].float(),
        Body(width, args.layers, 6, args.ff, args.conv),
        args.untied,
    )
    print("trainable", sum(p.numel() for p in head.parameters() if p.requires_grad), file=sys.stderr)
    train = EncodedDataset(*args.train.split(","))
    dev = {name: EncodedDataset(f"data3dev/{name}") for name in ("test", "unheard")}
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "log.jsonl", "a")
    result = {name: evaluate(head, projector, tokenizer, d, args.eval_count) for name, d in dev.items()}
    print(json.dumps({"step": 0, **result}), file=log, flush=True)
    print(0, result, file=sys.stderr)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    step, started = 0, time.time()
    while step < args.steps:
        for indices in batches(train.frame_counts, args.frames_per_batch, rng):
            lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, pad, lengths = padded(projector, train, indices)
            ids = answer_token_ids(tokenizer, [train.texts[i] for i in indices])
            targets = torch.tensor([t + 1 for row in ids for t in row], dtype=torch.long)
            target_lengths = torch.tensor([len(row) for row in ids])
            log_probs = head(x, pad).transpose(0, 1)
            loss = nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % 50 == 0:
                print(step, round(loss.item(), 3), round(time.time() - started), file=sys.stderr, flush=True)
            if step % args.eval_every == 0 or step == args.steps:
                result = {name: evaluate(head, projector, tokenizer, d, args.eval_count) for name, d in dev.items()}
                print(json.dumps({"step": step, "loss": loss.item(), **result}), file=log, flush=True)
                print(step, result, file=sys.stderr, flush=True)
                save_file(
                    {k: v.contiguous() for k, v in head.state_dict().items() if k != "embeddings"},
                    str(args.out / "head.safetensors"),
                )
            if step >= args.steps:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
