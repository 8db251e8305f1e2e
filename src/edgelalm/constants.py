"""The bundle contract: every name and number that export writes and the runtime reads, in one
place that both import (as gguf-py's constants.py). Imports nothing but typing: the CLI reads its
choices from here without loading torch, onnxruntime or llama.cpp. Each choice is a Literal type
(for the type checker and the CLI) and the tuple of its values (for messages and loops).
"""

from __future__ import annotations

from typing import Literal, get_args

# -- audio ------------------------------------------------------------------------------------

# What every stage after the audio reader expects (Whisper's and Qwen2-Audio's rate).
SAMPLING_RATE = 16_000
# Qwen2-Audio's audio tower: 100 mel frames/s, conv stride 2, then AvgPool1d(2, 2).
ENCODER_FRAMES_PER_SECOND = 25.0
# The encoder's stride-2 convolution reads two mel frames past the clip's last one.
RIGHT_CONTEXT_FRAMES = 2
# A clip needs 3 mel frames (30 ms) to give one encoder frame.
MIN_MEL_FRAMES = 3

# -- the bundle folder ----------------------------------------------------------------------

BUNDLE_FORMAT = "edgelalm-bundle"
# The newest format this edgelalm writes and reads. Version 2 adds a choice of compressors per
# bundle, each with its LoRA as a llama.cpp adapter over one unmerged decoder (issue 19); a bundle
# of one compressor with its adapter merged is still written as version 1, which older readers read.
# Version 3: a bundle of several whose choices carry their own CTC heads (realigned beside their
# adapters); a version-2 reader would decode every compressor with the bundle's head, so it must
# refuse them. A bundle is written at the lowest version that holds it.
BUNDLE_FORMAT_VERSION = 3
SINGLE_COMPRESSOR_FORMAT_VERSION = 1
SEVERAL_COMPRESSORS_FORMAT_VERSION = 2
REALIGNED_HEADS_FORMAT_VERSION = 3
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
COMPRESSOR_FILE = "compressor.onnx"
CTC_FILE = "ctc.onnx"
DECODER_FILE = "decoder.gguf"
# peft's adapter config: what marks a folder as a LoRA adapter (finetune writes it, export reads it).
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# What training writes beside its weights (finetune's adapter folder: --force replaces a folder
# of these), and the plot of its losses.
TRAIN_LOG_FILE = "train_log.jsonl"
TRAIN_SETTINGS_FILE = "train_settings.json"
LOSS_PLOT_FILE = "loss.png"
# The largest LoRA alpha read or trained (export/adapter.py, training/finetune.py): past about 10^38 a
# scaling overflows an adapter GGUF's float32; nothing trains anywhere near it.
MAX_LORA_ALPHA = 1e6
# The export extra's packages, by the names they import as: what `export`, `finetune` and the
# other torch commands need, and what `doctor` reports.
EXPORT_PACKAGES = ("torch", "transformers", "safetensors", "peft", "onnx", "onnxscript", "gguf")
# Qwen2-Audio's added tokens' texts, in the order Qwen numbers them (151643 .. 151648 in the 7B
# tokenizer): what scaffold writes, export names in the manifest and training ends answers with.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)
# What `edgelalm bench` measures when not told: its compressors and clip lengths (s).
BENCH_COMPRESSORS = ("none", "avg2", "avg3", "avg4", "avg6", "sample3", "unseg")
BENCH_SECONDS = (5.0, 30.0, 120.0, 600.0)
# What `edgelalm finetune` records beside the adapter (the compressor it was realigned to, ...).
FINETUNE_RECORD_FILE = "edgelalm_finetune.json"


def compressor_file(label: str) -> str:
    """A compressor choice's graph in a bundle of several: compressor-avg3.onnx."""
    return f"compressor-{label}.onnx"


def ctc_file(label: str) -> str:
    """A compressor choice's own CTC head (its adapter's, realigned to it): ctc-avg3.onnx."""
    return f"ctc-{label}.onnx"


def adapter_file(label: str) -> str:
    """A compressor choice's LoRA as a llama.cpp adapter GGUF: adapter-avg3.gguf."""
    return f"adapter-{label}.gguf"


# The one kind of features a bundle's encoder reads (runtime/features.py computes them).
FEATURES_KIND = "whisper_log_mel"
# The checkpoint's own mel filterbank [n_fft // 2 + 1, n_mels] (as whisper ships mel_filters.npz).
MEL_FILTERS_FILE = "mel_filters.npy"

# -- graph inputs and outputs ---------------------------------------------------------------

# encoder.onnx: mel [n_mels, T] + mel_right_context [n_mels, 2] -> audio_frames [L, audio_width]
ENCODER_INPUT = "mel"
ENCODER_RIGHT_CONTEXT_INPUT = "mel_right_context"
ENCODER_OUTPUT = "audio_frames"
# compressor.onnx: audio_frames [L, audio_width] -> audio_embeddings [N, hidden_size]
COMPRESSOR_INPUT = ENCODER_OUTPUT
COMPRESSOR_OUTPUT = "audio_embeddings"
# ctc.onnx (a checkpoint with a CTC head only): audio_embeddings [N, hidden_size] ->
# ctc_log_probs [N, 1 + vocab_size], column 0 the blank, column i + 1 the decoder's token i
CTC_INPUT = COMPRESSOR_OUTPUT
CTC_OUTPUT = "ctc_log_probs"
# ...or, a head over the encoder's frames (export's default, CtcReads "frames"): audio_frames
# [L, audio_width] -> the projector -> the head -> ctc_log_probs [L, 1 + vocab_size].
CTC_FRAMES_INPUT = ENCODER_OUTPUT

# -- choices ---------------------------------------------------------------------------------

CompressorName = Literal["none", "avg", "sample", "unseg", "mean", "max"]
COMPRESSOR_NAMES: tuple[CompressorName, ...] = get_args(CompressorName)
EncoderPrecision = Literal["fp32", "fp16w", "fp16", "int8"]
ENCODER_PRECISIONS: tuple[EncoderPrecision, ...] = get_args(EncoderPrecision)
# What `export` is asked for: a precision, or "auto", the checkpoint's own (fp16w for a tower stored
# in 16 bits, fp32 otherwise; export.checkpoint.auto_encoder_precision).
EncoderPrecisionChoice = Literal["auto", EncoderPrecision]
# The decoder's GGUF types: written directly (f32, f16) or by llama.cpp's quantizer.
QuantType = Literal["f32", "f16", "q8_0", "q4_k_m", "q4_0"]
QUANT_TYPES: tuple[QuantType, ...] = get_args(QuantType)
GGUF_ARCHITECTURE = "qwen2"
# llama.cpp's LLAMA_MAX_LAYERS: its loader aborts on a decoder with more (export and runtime refuse first).
LLAMA_MAX_LAYERS = 512
Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)
# How a clip longer than one encoder window is answered: "joined", all its windows' audio tokens in
# one prompt (a question about the whole recording); "each", every window (cut at a pause) answered
# on its own and the answers joined (a long transcript from a model trained on single windows).
WindowMode = Literal["joined", "each"]
WINDOW_MODES: tuple[WindowMode, ...] = get_args(WindowMode)
# `run --subtitles`: SubRip (.srt) or WebVTT (.vtt), a cue per answered window.
SubtitleFormat = Literal["srt", "vtt"]
SUBTITLE_FORMATS: tuple[SubtitleFormat, ...] = get_args(SubtitleFormat)
# A checkpoint's own advice on how `run` cuts long clips (the windows it answers best), read by
# export into the manifest's `windows` section: {"mode": "each", "seconds": 8}.
WINDOWS_ADVICE_FILE = "edgelalm_windows.json"
# A checkpoint's CTC head over its audio embeddings (a blank vector and a scale; the vocabulary is
# the decoder's input embeddings), trained beside the decoder: export writes it as CTC_FILE and the
# runtime decodes with it (joint CTC/attention beam search).
CTC_HEAD_FILE = "edgelalm_ctc_head.safetensors"
# What a bundle's CTC head reads (`export --ctc-reads`): "frames", the encoder's frames at their full
# rate through the projector, one head for every compressor (the decoder reads the compressed
# tokens; the joint score, the audio before compression); "audio-tokens", the compressed tokens the
# decoder reads, with the head realigned to the compressor beside its adapter where it has one.
CtcReads = Literal["frames", "audio-tokens"]
CTC_READS: tuple[CtcReads, ...] = get_args(CtcReads)
DEFAULT_CTC_READS: CtcReads = "frames"
# In a head realigned to a compressor (an adapter folder's), its metadata key naming that compressor.
REALIGNED_TO_KEY = "edgelalm_realigned_to"
# In a head with transformer layers of its own (tensors "layers.N.*"), its metadata key giving
# their attention heads (the layer count and widths are in the tensors' names and shapes).
CTC_ATTENTION_HEADS_KEY = "edgelalm_ctc_attention_heads"
# ... and how many positions each side a position attends to (absent or 0: the whole window).
CTC_ATTENTION_SPAN_KEY = "edgelalm_ctc_attention_span"
# The checkpoint's advice on how to decode with it, read by export into the manifest's `decoding`
# section: {"beam_size": 4, "ctc_weight": 0.5}.
DECODING_ADVICE_FILE = "edgelalm_decoding.json"
# llama.cpp's extra weight buffers (edgelalm.runtime.llama_backend).
ExtraBuffers = Literal["auto", "on", "off"]
EXTRA_BUFFER_CHOICES: tuple[ExtraBuffers, ...] = get_args(ExtraBuffers)

# How a checkpoint is prompted: "instruct" (Qwen2-Audio-Instruct: a chat template around the audio
# and the prompt) or "base" (Qwen2-Audio base: the audio, then a task text, no chat turns).
PromptFormat = Literal["instruct", "base"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = get_args(PromptFormat)
# Where a bundle's chat template came from (edgelalm.prompt).
TemplateSource = Literal["checkpoint", "edgelalm", "none"]
# Random-weights checkpoints with realistic shapes (edgelalm.scaffold.PRESETS).
ScaffoldPreset = Literal["tiny", "small", "qwen2-audio-7b"]
SCAFFOLD_PRESETS: tuple[ScaffoldPreset, ...] = get_args(ScaffoldPreset)
