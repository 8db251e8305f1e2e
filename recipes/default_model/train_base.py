"""Train the default model's base checkpoint from scratch (speech recognition, `none` compressor).

    python recipes/default_model/make_data.py                 # data/train, data/test (once)
    python recipes/default_model/train_base.py                # -> build/default-model/base
    python recipes/default_model/train_base.py --steps 50 --out /tmp/smoke   # a smoke run

Writes OUT/final (a transformers checkpoint: safetensors, config, processor), OUT/last (a
snapshot every 500 steps), OUT/train_log.jsonl and OUT/loss.png. The tokenizer is byte-level
BPE trained on the training sentences; the model is a 4+4-layer Qwen2-Audio with a 10 s window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm import scaffold
from edgelalm.prompt import chat_template_pieces
from edgelalm.training import texts
from edgelalm.training.dataset import SpeechDataset
from edgelalm.training.encoded import EncodedDataset, is_encoded_folder
from edgelalm.training.model import sinusoids
from edgelalm.training.train import RUN_CTC_HEAD_FILE, TrainSettings, plot_losses, train

# The default model's shape (DESIGN.md: ~0.8 s per step at batch 16 on 2 cores).
DEFAULT_MODEL_SHAPE = dict(
    window_seconds=10,
    encoder_layers=4,
    encoder_d_model=192,
    encoder_heads=4,
    encoder_ffn_dim=768,
    decoder_layers=4,
    decoder_hidden=256,
    decoder_heads=4,
    decoder_kv_heads=4,
    decoder_ffn_dim=768,
    max_position_embeddings=2048,
)
TOKENIZER_VOCAB = 1024
TOKENIZER_SENTENCES = 20000


def build_base(out_dir: Path, seed: int) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """Tokenizer, config, processor and a seeded random model with Whisper's fixed positions."""
    sentences = texts.utterances("train", TOKENIZER_SENTENCES, seed)
    # The prompt's own words, so the chat template costs few tokens.
    scaffold_prompt = [scaffold.DEFAULT_SYSTEM_PROMPT, "system user assistant Audio 1:", "Transcribe the audio."]
    tokenizer = scaffold.train_tokenizer(sentences + scaffold_prompt * 200, vocab_size=TOKENIZER_VOCAB)
    config = scaffold.model_config(tokenizer, **DEFAULT_MODEL_SHAPE)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32)
    tower = model.model.audio_tower
    tower.embed_positions.weight.data.copy_(sinusoids(*tower.embed_positions.weight.shape))
    model.generation_config = scaffold.generation_config(tokenizer)
    scaffold.write_processor(out_dir / "processor", config, tokenizer)
    processor = Qwen2AudioProcessor.from_pretrained(out_dir / "processor")
    chat_template_pieces(processor, "the new processor")  # fails early if the template cannot be cut
    return model, processor


def saver(model, processor):
    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        scaffold.write_processor(folder, model.config, processor.tokenizer)

    return save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder with train/ and test/ (make_data.py)")
    parser.add_argument(
        "--more-train",
        type=Path,
        action="append",
        default=[],
        help="encoded data: another training folder read with DATA/train (more clips: another seed)",
    )
    parser.add_argument(
        "--train-clips",
        type=int,
        default=None,
        help="encoded data: read only the first N clips of DATA/train (the --more-train folders whole)",
    )
    parser.add_argument("--out", type=Path, default=Path("build/default-model/base"))
    parser.add_argument("--steps", type=int, default=TrainSettings.steps, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None, help="end after this many steps, mid-schedule")
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--learning-rate", type=float, default=TrainSettings.learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctc-weight", type=float, default=TrainSettings.ctc_weight)
    parser.add_argument(
        "--ctc-target",
        choices=("characters", "tokens"),
        default=TrainSettings.ctc_target,
        help="tokens (encoded data): CTC onto the decoder's vocabulary through its own input embeddings",
    )
    parser.add_argument("--augment-probability", type=float, default=TrainSettings.augment_probability)
    parser.add_argument("--warmup-steps", type=int, default=TrainSettings.warmup_steps)
    parser.add_argument(
        "--concat-probability",
        type=float,
        default=0.15,
        help="encoded data: share of rows joining 2-4 clips (long answers)",
    )
    parser.add_argument(
        "--token-corruption",
        type=float,
        default=TrainSettings.token_corruption,
        help="share of answer tokens the decoder reads as random ones in training (the labels stay true)",
    )
    parser.add_argument(
        "--words-weight",
        type=float,
        default=TrainSettings.words_weight,
        help="how much likelier a free-word clip is drawn than any other (encoded data only)",
    )
    parser.add_argument(
        "--tune-tower-from",
        type=int,
        default=None,
        help="train the audio tower's layers from this one up and its final layer norm too (encoded data "
        "stored below that layer: make_encoded_data.py --below-layer); else the tower stays frozen",
    )
    parser.add_argument(
        "--tower-learning-rate-share",
        type=float,
        default=TrainSettings.tower_learning_rate_share,
        help="the tuned tower layers' learning rate, as a share of --learning-rate",
    )
    parser.add_argument(
        "--lm-text",
        type=Path,
        default=None,
        help="sentences, one per line (make_lm_text.py): a language-model loss on them beside the transcripts",
    )
    parser.add_argument(
        "--lm-weight", type=float, default=0.3, help="the language-model loss's weight (with --lm-text)"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from this checkpoint (weights and tokenizer) with a fresh schedule; a TokenCtc head "
        "saved beside it (its run's ctc_head.safetensors) is continued too",
    )
    args = parser.parse_args(argv)

    settings = TrainSettings(
        steps=args.steps,
        stop_after=args.stop_after,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        threads=args.threads,
        ctc_weight=args.ctc_weight,
        ctc_target=args.ctc_target,
        augment_probability=args.augment_probability,
        warmup_steps=args.warmup_steps,
        concat_probability=args.concat_probability,
        token_corruption=args.token_corruption,
        words_weight=args.words_weight,
        tune_tower_from=args.tune_tower_from,
        tower_learning_rate_share=args.tower_learning_rate_share,
        lm_weight=args.lm_weight if args.lm_text else 0.0,
    )
    # Encoded data (the frozen Whisper tower's output, make_encoded_data.py) or rendered audio.
    encoded = is_encoded_folder(args.data / "train")
    if encoded and not args.init_from:
        raise SystemExit("encoded data needs --init-from (the checkpoint whose tower encoded it: make_init.py)")
    if (args.more_train or args.train_clips) and not encoded:
        raise SystemExit("--more-train and --train-clips read encoded data only")
    reader = EncodedDataset if encoded else SpeechDataset
    train_data = (
        EncodedDataset(args.data / "train", *args.more_train, first_clips=args.train_clips)
        if encoded
        else SpeechDataset(args.data / "train")
    )
    test_data = reader(args.data / "test")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.init_from:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            args.init_from, dtype=torch.float32, use_safetensors=True
        )
        processor = Qwen2AudioProcessor.from_pretrained(args.init_from)
    else:
        model, processor = build_base(args.out, args.seed)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: {parameters / 1e6:.2f} M parameters; tokenizer {len(processor.tokenizer)} tokens; {train_data!r}",
        file=sys.stderr,
    )
    alphabet = "".join(sorted({c for word in texts.vocabulary() for c in word} | {" "}))
    started = time.perf_counter()
    save = saver(model, processor)
    previous_head = args.init_from.parent / RUN_CTC_HEAD_FILE if args.init_from else None
    log = train(
        model,
        processor,
        train_data,
        test_data,
        args.out,
        settings,
        # encoded data: CTC on the projected embeddings (texts.ALPHABET covers the free-word text too)
        ctc_alphabet=(texts.ALPHABET if settings.ctc_weight > 0 else None) if encoded else alphabet,
        save=save,
        ctc_head=previous_head if previous_head and previous_head.is_file() else None,
        lm_texts=args.lm_text.read_text(encoding="utf-8").splitlines() if args.lm_text else None,
    )
    save(args.out / "final")
    plot_losses(
        log,
        args.out / "loss.png",
        f"default model, base training ({parameters / 1e6:.1f} M parameters, batch {settings.batch_size})",
    )
    summary = {
        "parameters": parameters,
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "final": log.records[-1],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
