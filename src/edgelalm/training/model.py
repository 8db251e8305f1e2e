"""Qwen2-Audio in PyTorch for training and evaluation: the data path of `edgelalm run`, batched.

    waveforms -> log_mel_batch -> encode_batch -> compress_and_project -> decoder_inputs -> logits

Each step computes what transformers computes for one padded clip (Whisper log-mel, the audio
tower with its attention mask), but at the batch's own length instead of the full window, and
puts a compressor between the tower and the projector as the bundle does. The text around the
audio comes from the chat template cut exactly as `export` cuts it, so the model is trained on
the token sequence the runtime will feed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from edgelalm.constants import ENDOFTEXT, IM_END, PromptFormat
from edgelalm.export import audio_tower as tower_steps
from edgelalm.manifest import PromptInfo
from edgelalm.prompt import DEFAULT_PROMPT, chat_template_pieces, prompt_pieces
from edgelalm.runtime.ctc import CtcPrefixScorer
from edgelalm.runtime.features import valid_mel_frames
from edgelalm.runtime.search import Advance, beam_search, log_softmax

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# Features


def log_mel_batch(waveforms: list[np.ndarray], feature_extractor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel of each clip as transformers computes it on a zero-padded window.

    Returns mel [B, n_mels, T] and the valid frame count per clip. T is even and leaves the two
    frames of zero padding the encoder's stride-2 convolution reads after the longest clip, up to
    the window's end (past it transformers has no frames; the convolution pads with zeros).
    """
    hop_length, n_fft = feature_extractor.hop_length, feature_extractor.n_fft
    window_frames = feature_extractor.nb_max_frames
    valid_frames = [valid_mel_frames(len(w), hop_length) for w in waveforms]
    if max(valid_frames) > window_frames:
        raise ValueError(f"a clip of {max(valid_frames)} mel frames is longer than the {window_frames}-frame window")
    frames = max(valid_frames) + 2
    frames = min(frames + frames % 2, window_frames)
    # Zeros after every clip, far enough that no kept frame reaches the reflect padding.
    samples = frames * hop_length + n_fft
    batch = np.zeros((len(waveforms), samples), dtype=np.float32)
    for row, waveform in enumerate(waveforms):
        batch[row, : len(waveform)] = waveform
    window = torch.hann_window(n_fft)
    spectrum = torch.stft(torch.from_numpy(batch), n_fft, hop_length, window=window, return_complex=True)
    power = spectrum[..., :frames].abs() ** 2  # [B, n_fft/2+1, frames]
    filters = torch.from_numpy(np.asarray(feature_extractor.mel_filters, dtype=np.float32))  # [n_fft/2+1, n_mels]
    log_mel = torch.clamp(filters.T @ power, min=1e-10).log10()
    peak = log_mel.amax(dim=(1, 2), keepdim=True)
    log_mel = torch.maximum(log_mel, peak - 8.0)
    return (log_mel + 4.0) / 4.0, torch.tensor(valid_frames)


# ---------------------------------------------------------------------------------------------
# Audio tower


def sinusoids(positions: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position embeddings (the tower's table is frozen in transformers)."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled_time = torch.arange(positions, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


@dataclass
class EncodedAudio:
    frames: torch.Tensor  # [B, F, D] the tower's output at 25 frames/s (padding included)
    frame_counts: list[int]  # valid output frames per clip
    positions: torch.Tensor  # [B, P, D] the last layer before pooling, 50 positions/s
    position_counts: torch.Tensor  # valid positions per clip


def encode_batch(audio_tower: nn.Module, mel: torch.Tensor, mel_lengths: torch.Tensor) -> EncodedAudio:
    """The tower with transformers' padding mask: positions past each clip's valid count are
    masked as keys, so every valid output frame equals the one-clip, full-window run."""
    hidden, position_counts = encode_below(audio_tower, mel, mel_lengths, len(audio_tower.layers))
    return encode_above(audio_tower, hidden, position_counts, len(audio_tower.layers))


def encode_below(
    audio_tower: nn.Module, mel: torch.Tensor, mel_lengths: torch.Tensor, end_layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower up to (not including) layer `end_layer`: hidden [B, P, D] at 50 positions/s and
    the valid positions per clip. What training data stores when the layers above are tuned."""
    device = audio_tower.conv1.weight.device
    mel, mel_lengths = mel.to(device), mel_lengths.to(device)
    hidden = tower_steps.convolutions(audio_tower, mel)
    position_counts = (mel_lengths - 1) // 2 + 1
    mask = padding_mask(audio_tower, hidden, position_counts)
    return tower_steps.transformer(audio_tower, hidden, mask, 0, end_layer), position_counts


def encode_above(
    audio_tower: nn.Module, hidden: torch.Tensor, position_counts: torch.Tensor, first_layer: int
) -> EncodedAudio:
    """The rest of the tower from layer `first_layer` on `encode_below`'s output, then the pool
    and the final layer norm (25 frames/s; the last position of an odd count is dropped, as
    transformers' length formula says)."""
    position_counts = position_counts.to(hidden.device)
    hidden = encode_between(audio_tower, hidden, position_counts, first_layer, None)
    frame_counts = [int(count) // 2 for count in position_counts]
    return EncodedAudio(tower_steps.pooled(audio_tower, hidden), frame_counts, hidden, position_counts)


def encode_between(
    audio_tower: nn.Module, hidden: torch.Tensor, position_counts: torch.Tensor, first_layer: int, end_layer: int | None
) -> torch.Tensor:
    """Layers [first_layer, end_layer) on hidden states stored below `first_layer` (None: to the last)."""
    if not audio_tower.layers[first_layer:end_layer]:
        return hidden  # none to run (the pool after the whole tower): no mask to build
    mask = padding_mask(audio_tower, hidden, position_counts)
    return tower_steps.transformer(audio_tower, hidden, mask, first_layer, end_layer)


def padding_mask(audio_tower: nn.Module, hidden: torch.Tensor, position_counts: torch.Tensor) -> torch.Tensor:
    """transformers' bidirectional mask with each clip's padding masked as keys."""
    valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < position_counts[:, None]).long()
    return create_bidirectional_mask(config=audio_tower.config, inputs_embeds=hidden, attention_mask=valid)


def compress_and_project(model: nn.Module, compressor: nn.Module, encoded: EncodedAudio) -> list[torch.Tensor]:
    """Audio embeddings per clip: valid frames -> compressor -> projector (as the bundle's graph)."""
    projector = model.model.multi_modal_projector
    return [projector(compressor(encoded.frames[row, :count])) for row, count in enumerate(encoded.frame_counts)]


# ---------------------------------------------------------------------------------------------
# Decoder


def answer_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each transcript's token ids, as plain text: a transcript holding "<|im_end|>" trained the
    decoder to end its answer there (the runtime's prompts are text in the same way)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@dataclass(frozen=True)
class PromptIds:
    """Token ids around the audio, tokenized piece by piece as the runtime does."""

    before_audio: list[int]  # ... <|audio_bos|>
    after_audio: list[int]  # <|audio_eos|> ... prompt ... <|im_start|>assistant\n
    end_of_answer: int  # <|im_end|> (base format: <|endoftext|>): the answer's last label, where generation stops

    @classmethod
    def from_processor(cls, processor, prompt: str = DEFAULT_PROMPT, source: str = "checkpoint") -> PromptIds:
        """The processor's chat template around `prompt` (the instruct format)."""
        return cls.from_pieces(processor.tokenizer, chat_template_pieces(processor, source), prompt)

    @classmethod
    def for_checkpoint(cls, processor, folder: Path, prompt_format: PromptFormat | None = None) -> PromptIds:
        """The prompt export feeds the checkpoint at `folder` in `prompt_format` (None: detected as
        export detects it: a template-less Qwen2-Audio-7B is prompted in the base format)."""
        from edgelalm.export.checkpoint import model_name

        return cls.from_pieces(processor.tokenizer, prompt_pieces(processor, folder, model_name(folder), prompt_format))

    @classmethod
    def from_pieces(cls, tokenizer, pieces: PromptInfo, prompt: str | None = None) -> PromptIds:
        """The pieces export writes into the manifest (`prompt.prompt_pieces`), around `prompt`
        (None: the format's default, as the runtime's), ending as that format's answers end."""
        end = ENDOFTEXT if pieces.format == "base" else IM_END

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        prompt = pieces.default_prompt if prompt is None else prompt
        return cls(
            before_audio=ids(pieces.before_audio),
            after_audio=ids(pieces.after_audio + prompt + pieces.after_prompt),
            end_of_answer=tokenizer.convert_tokens_to_ids(end),
        )


def decoder_inputs(
    model: nn.Module,
    prompt: PromptIds,
    audio: list[torch.Tensor],
    answers: list[list[int]] | None,
    read_answers: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """inputs_embeds [B, N, H] right-padded, attention mask [B, N] and labels (answer tokens and
    <|im_end|> only; None without answers, for generation, where B must be 1). `read_answers`
    (as long as `answers`): the tokens embedded in their place, where they differ from the labels."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    rows, label_rows = [], []
    read = read_answers if read_answers is not None else answers
    for row, audio_embeddings in enumerate(audio):
        answer = [] if answers is None else list(answers[row]) + [prompt.end_of_answer]
        answer_read = [] if read is None else list(read[row]) + [prompt.end_of_answer]
        before = embed(torch.tensor(prompt.before_audio, device=device))
        after = embed(torch.tensor(prompt.after_audio + answer_read, device=device))
        rows.append(torch.cat([before, audio_embeddings, after]))
        context = len(prompt.before_audio) + audio_embeddings.shape[0] + len(prompt.after_audio)
        label_rows.append([IGNORE_INDEX] * context + answer)
    length = max(r.shape[0] for r in rows)
    hidden = rows[0].shape[1]
    inputs = torch.zeros(len(rows), length, hidden, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=device)
    for row, embeddings in enumerate(rows):
        inputs[row, : embeddings.shape[0]] = embeddings
        mask[row, : embeddings.shape[0]] = 1
        labels[row, : len(label_rows[row])] = torch.tensor(label_rows[row], device=device)
    return inputs, mask, (labels if answers is not None else None)


def text_inputs(
    model: nn.Module, rows: list[list[int]], boundary: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain text for the decoder's language-model loss, no prompt and no audio: each row's
    tokens between two `boundary` tokens (<|endoftext|>), right-padded; inputs, mask, labels."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    framed = [[boundary, *row, boundary] for row in rows]
    length = max(len(row) for row in framed)
    ids = torch.full((len(rows), length), boundary, dtype=torch.long, device=device)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for row, tokens in enumerate(framed):
        ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
        labels[row, : len(tokens)] = torch.tensor(tokens, device=device)
        mask[row, : len(tokens)] = 1
    return embed(ids), mask, labels


def answer_loss(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over the answer tokens."""
    hidden = model.model.language_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    # Position i predicts label i + 1; only answer positions reach the head.
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][selected])
    return nn.functional.cross_entropy(logits, targets[selected])


@torch.no_grad()
def greedy_answer(
    model: nn.Module, prompt: PromptIds, audio_embeddings: torch.Tensor, end_ids: list[int], max_new_tokens: int = 64
) -> list[int]:
    """Greedy continuation of one clip's prompt (transformers' generate on inputs_embeds)."""
    inputs, mask, _ = decoder_inputs(model, prompt, [audio_embeddings], None)
    generated = model.generate(
        inputs_embeds=inputs,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=end_ids,
        pad_token_id=end_ids[-1],
    )[0].tolist()
    return [token for token in generated if token not in end_ids]


def torch_advance(model: nn.Module, prompt_embeddings: torch.Tensor) -> Advance:
    """A beam search's decoder (`edgelalm.runtime.search.Advance`) on transformers' model: every
    hypothesis's whole sequence evaluated afresh each step, no cache to go wrong: the reference
    for llama.cpp's sequences, and the PyTorch column of the WER tables."""
    embed = model.get_input_embeddings()
    answers: list[list[int]] = []

    @torch.no_grad()
    def advance(parents: list[int], tokens: list[int]) -> np.ndarray:
        nonlocal answers
        answers = [[]] if not parents else [[*answers[p], t] for p, t in zip(parents, tokens, strict=True)]
        rows = [torch.cat([prompt_embeddings, embed(torch.tensor(answer, dtype=torch.long))]) for answer in answers]
        logits = model(inputs_embeds=torch.stack(rows)).logits[:, -1]
        return log_softmax(logits.double().numpy())

    return advance


@torch.no_grad()
def search_answer(
    model: nn.Module,
    prompt: PromptIds,
    audio_embeddings: torch.Tensor,
    end_ids: list[int],
    max_new_tokens: int,
    beam_size: int,
    ctc_log_probs: np.ndarray | None = None,
    ctc_weight: float = 0.0,
) -> list[int]:
    """One clip's answer by the runtime's beam search (joint with a CTC head's log-probabilities
    [positions, 1 + vocab] over its audio where given), on transformers' model."""
    inputs, _, _ = decoder_inputs(model, prompt, [audio_embeddings], None)
    scorer = CtcPrefixScorer(ctc_log_probs) if ctc_log_probs is not None else None
    tokens, _ = beam_search(
        torch_advance(model, inputs[0]), frozenset(end_ids), max_new_tokens, beam_size, scorer, ctc_weight
    )
    return tokens
