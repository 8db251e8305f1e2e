"""Train a checkpoint's CTC head again, with transformer layers of its own, the model frozen.

    python recipes/default_model/train_ctc_head.py --data data3/train-seed23,data3/train-seed31 \
        --dev data3dev/test --out build/default-model/ctc-layers

The head the model was trained with scores each projected frame by its similarity to each token's
embedding, one frame at a time. `CtcLayers` (edgelalm.export.ctc) read the clip first (the whole
window, or with --attention-span N the N positions each side of each: run_all.sh step 24); they
start as the identity, so step 0 is the checkpoint's head, and only the head trains (its blank,
scale and layers; the decoder's embeddings, the projector and the tower stay as they are), on
encoded clips (make_encoded_data.py) through the projector, CTC loss alone. Writes
OUT/edgelalm_ctc_head.safetensors (a head file that export, wer_check.py and ship.py read),
and OUT/train_log.jsonl (the CTC loss, and the best path's WER on --dev every --eval-every steps;
its test_loss is the frozen decoder's answer loss, the same throughout).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from edgelalm.constants import CTC_HEAD_FILE
from edgelalm.pretrained import default_model_dir
from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.finetune import load_for_training
from edgelalm.training.train import RUN_CTC_HEAD_FILE, TrainSettings, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--data", required=True, help="encoded training folders, comma-separated")
    parser.add_argument("--dev", type=Path, required=True, help="an encoded development folder (best-path WER)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--attention-span", type=int, default=0, help="positions each side the layers attend to (0: the whole window)"
    )
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model_dir = args.model or default_model_dir()
    model, processor = load_for_training(model_dir, "cpu")
    model.requires_grad_(False)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        final_learning_rate_share=0.1,
        ctc_target="tokens",
        ctc_weight=1.0,
        ctc_layers=args.layers,
        ctc_layers_attention_span=args.attention_span,
        answer_loss=False,
        augment_probability=0.0,
        eval_every=args.eval_every,
        eval_clips=args.eval_clips,
        save_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
    )
    train_data = EncodedDataset(*args.data.split(","))
    log = train(
        model, processor, train_data, EncodedDataset(args.dev), args.out, settings, parameters=[],
        save=lambda folder: None, ctc_head=model_dir / CTC_HEAD_FILE,
    )  # fmt: skip
    shutil.move(args.out / RUN_CTC_HEAD_FILE, args.out / CTC_HEAD_FILE)
    print(f"{args.out / CTC_HEAD_FILE}: last {log.records[-1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
