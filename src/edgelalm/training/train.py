"""Train a Qwen2-Audio-architecture model from scratch for speech recognition (the default model).

The loss is the answer's cross entropy (the transcript after the chat prompt, audio in between),
plus a CTC loss over characters on the tower's last layer, a training-only head that is not
saved: it teaches the encoder to align with speech long before the decoder's attention finds it,
which is what makes a few thousand CPU steps enough. Every draw (init, batches, augmentation)
comes from the seed, so the same arguments give the same model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from edgelalm.constants import ENDOFTEXT, REALIGNED_TO_KEY, TRAIN_LOG_FILE, TRAIN_SETTINGS_FILE
from edgelalm.errors import EdgelalmError
from edgelalm.export.ctc import CtcLayers, read_ctc_head
from edgelalm.files import write_json
from edgelalm.progress import Bar
from edgelalm.training import speech
from edgelalm.training.dataset import SpeechDataset
from edgelalm.training.encoded import EncodedDataset, stored_per_frame
from edgelalm.training.evaluate import score
from edgelalm.training.model import (
    EncodedAudio,
    PromptIds,
    answer_loss,
    answer_token_ids,
    compress_and_project,
    decoder_inputs,
    encode_above,
    encode_batch,
    log_mel_batch,
    text_inputs,
)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 4000  # the length of the learning-rate schedule
    stop_after: int | None = None  # end early, mid-schedule (how the default model's stage 1 ended)
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 300
    final_learning_rate_share: float = 0.05  # cosine decay ends at this share of the peak
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ctc_weight: float = 0.3
    # What the CTC head predicts: "characters" (its own linear head) or "tokens" (the decoder's
    # vocabulary through its input embeddings, read from the projected audio: TokenCtc).
    ctc_target: str = "characters"
    # "tokens" only: the compressor the head is realigned to (TokenCtc's residual map; finetune).
    ctc_realign_to: str | None = None
    # "tokens" only: transformer layers of the head's own (CtcLayers: width/64 attention heads, at
    # least one, a feed-forward 4x wide) before the similarity, from the identity; a head loaded from a
    # file keeps the layers it has (asking for new ones over them is refused).
    ctc_layers: int = 0
    ctc_layers_dropout: float = 0.1
    ctc_layers_attention_span: int = 0  # positions each side (0: the whole window)
    # False: the CTC loss alone (finetune's head-only realignment: nothing on the answer path trains).
    answer_loss: bool = True
    augment_probability: float = 0.8
    eval_every: int = 250
    eval_clips: int = 64
    save_every: int = 500
    seed: int = 0
    threads: int | None = None
    bucket_batches: int = 50  # batches drawn together and sorted by length, to limit padding
    # Encoded (precomputed tower) data only: the share of batches whose rows join 2-4 clips end to end,
    # so the decoder learns long, multi-sentence answers; at most this many frames a row.
    concat_probability: float = 0.0
    max_concat_frames: int = 1200
    # Share of answer tokens the decoder reads as a random token in training (its labels stay
    # true): the next word must then come from the audio more than from the words before it.
    token_corruption: float = 0.0
    # Encoded data only: how much likelier a free-word clip (kind "words") is drawn than any other.
    # No grammar predicts a free word sequence, so more of them should make the decoder listen.
    words_weight: float = 1.0
    # Encoded data stored below a tower layer (`build_encoded(below_layer=)`) only: the tower's
    # layers from this one up and its final layer norm train too (None: the tower stays frozen),
    # at this share of the learning rate, so that the pretrained layers move less than the new ones.
    tune_tower_from: int | None = None
    tower_learning_rate_share: float = 0.3
    # With `train(lm_texts=)`: a language-model loss on that many plain sentences a step (no audio,
    # no prompt), at this weight, so the decoder learns English words and sentences beyond the
    # transcripts.
    lm_weight: float = 0.0
    lm_batch_size: int = 16
    lm_max_tokens: int = 64


# ---------------------------------------------------------------------------------------------
# Batches


def batch_indices(
    seconds: np.ndarray,
    batch_size: int,
    bucket_batches: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> Iterator[list[int]]:
    """Endless batches: draw bucket_batches * batch_size clips (each in proportion to its weight,
    if weights are given), sort them by length, cut them into batches and shuffle those, so a batch
    holds clips of similar length."""
    chances = None if weights is None else weights / weights.sum()
    while True:
        drawn = rng.choice(len(seconds), size=batch_size * bucket_batches, replace=False, p=chances)
        drawn = drawn[np.argsort(seconds[drawn], kind="stable")]
        batches = [drawn[i : i + batch_size].tolist() for i in range(0, len(drawn), batch_size)]
        for order in rng.permutation(len(batches)):
            yield batches[order]


def fitted_augment(
    samples: np.ndarray, window_samples: int, rng: np.random.Generator, sampling_rate: int
) -> np.ndarray:
    """`speech.augment` with its silence padding shortened so the clip stays inside one window."""
    room_s = max(0.0, (window_samples - len(samples)) / 2 / sampling_rate)
    settings = speech.AugmentSettings(max_silence_s=min(speech.AugmentSettings().max_silence_s, room_s))
    return speech.augment(samples, rng, settings, sampling_rate)[:window_samples]


def corrupted(answers: list[list[int]], share: float, vocabulary: int, rng: np.random.Generator) -> list[list[int]]:
    """The answers as the decoder reads them in training: each token replaced, with probability
    `share`, by a random one of the first `vocabulary` ids (not a special token)."""
    if share <= 0:
        return answers
    return [
        [int(rng.integers(vocabulary)) if rng.random() < share else token for token in answer] for answer in answers
    ]


# ---------------------------------------------------------------------------------------------
# CTC head (training only)


class CharacterCtc(nn.Module):
    """Linear head from the tower's last layer (50 positions/s) to characters plus a blank."""

    def __init__(self, width: int, alphabet: str) -> None:
        super().__init__()
        self.alphabet = alphabet
        self.head = nn.Linear(width, len(alphabet) + 1)  # index 0 is the blank

    def targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[self.alphabet.index(c) + 1 for c in text if c in self.alphabet] for text in texts]
        return torch.tensor([i for row in ids for i in row]), torch.tensor([len(row) for row in ids])

    def loss(self, positions: torch.Tensor, position_counts: torch.Tensor, texts: list[str]) -> torch.Tensor:
        log_probs = self.head(positions).log_softmax(-1).transpose(0, 1)  # [T, B, C]
        targets, target_lengths = self.targets(texts)
        return nn.functional.ctc_loss(log_probs, targets, position_counts, target_lengths, zero_infinity=True)


RUN_CTC_HEAD_FILE = "ctc_head.safetensors"  # a TokenCtc's own parameters, in the run's folder


def best_path_ids(log_probs: torch.Tensor) -> list[int]:
    """A token CTC's best path over [T, 1 + vocab] log-probabilities (column 0 the blank): each
    position's most likely column, repeats merged and blanks removed, as decoder token ids."""
    best = log_probs.argmax(-1).tolist()
    return [i - 1 for n, i in enumerate(best) if i != 0 and (n == 0 or best[n - 1] != i)]


class TokenCtc(nn.Module):
    """CTC from the projected audio embeddings onto the decoder's own token vocabulary, scored
    against the decoder's input embeddings (tied), plus a learned blank. It pulls each frame's
    embedding toward the embedding of the token being said, so the decoder meets the speech as
    something close to its own text and transcribing becomes copying, for any word sequence."""

    def __init__(
        self, embeddings: nn.Embedding, tokenizer, realign: bool = False, layers: CtcLayers | None = None
    ) -> None:
        super().__init__()
        self.embeddings = embeddings  # the decoder's, not a copy: the CTC gradient reaches them
        self.tokenizer = tokenizer
        self.blank = nn.Parameter(torch.randn(embeddings.embedding_dim) * embeddings.weight.detach().std())
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # Realigned to a compressor (finetune): a residual linear map over each compressed embedding,
        # from the identity (an average of frames is no longer close to one token's embedding).
        width = embeddings.embedding_dim
        self.transform = nn.Parameter(torch.zeros(width, width)) if realign else None
        # Layers of its own (edgelalm.export.ctc.CtcLayers) read the window around each position
        # before it is scored; they start as the identity.
        self.layers = layers

    def log_probs(self, positions: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled cosine similarity: directions are matched, and the embeddings' norms (which the
        decoder reads too) are left to the answer loss. `positions`: [T, D] or [B, T, D] (with
        `padding` [B, T], True after each row's positions, for the layers' attention)."""
        if self.layers is not None:
            batched = positions if positions.dim() == 3 else positions[None]
            positions = self.layers(batched, padding).reshape(positions.shape)
        if self.transform is not None:
            positions = positions + positions @ self.transform.T
        vocabulary = torch.cat([self.blank[None], self.embeddings.weight])  # index 0 is the blank
        cosine = nn.functional.normalize(positions, dim=-1) @ nn.functional.normalize(vocabulary, dim=-1).T
        return (cosine * self.log_scale.exp()).log_softmax(-1)

    def targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[i + 1 for i in row] for row in answer_token_ids(self.tokenizer, texts)]
        return torch.tensor([i for row in ids for i in row], dtype=torch.long), torch.tensor([len(r) for r in ids])

    def loss(self, positions: torch.Tensor, position_counts: torch.Tensor, texts: list[str]) -> torch.Tensor:
        targets, target_lengths = self.targets(texts)
        padding = torch.arange(positions.shape[1], device=positions.device)[None] >= position_counts[:, None]
        log_probs = self.log_probs(positions, padding).transpose(0, 1)  # [T, B, C]
        return nn.functional.ctc_loss(log_probs, targets, position_counts, target_lengths, zero_infinity=True)

    def save_head(self, path: Path, realigned_to: str | None = None) -> None:
        """Its own parameters (the embeddings are the model's, saved with it); `realigned_to`: the
        compressor a realigned head was trained on, in the file's metadata (export reads it)."""
        tensors = {"blank": self.blank.detach(), "log_scale": self.log_scale.detach()}
        if self.transform is not None:
            tensors["transform"] = self.transform.detach()
        metadata = {REALIGNED_TO_KEY: realigned_to} if realigned_to else {}
        if self.layers is not None:
            tensors |= self.layers.tensors()
            metadata |= self.layers.metadata()
        save_file(tensors, str(path), metadata=metadata or None)

    def load_head(self, path: Path, layers_dropout: float = 0.0) -> None:
        """An earlier head's tensors, checked as export checks them (a realigned one's map where
        this head realigns too; a head that does not realign refuses one); its layers, where it
        has any, replace this head's, with `layers_dropout` where they train on."""
        read = read_ctc_head(path, self.embeddings.embedding_dim, layers_dropout)
        if read.transform is not None and self.transform is None:
            # Dropping the map would score a head that neither export nor the runtime computes.
            raise EdgelalmError(
                f"{path}: this head is realigned to a compressor ({REALIGNED_TO_KEY} in its metadata); it reads that "
                "compressor's audio tokens, not this run's"
            )
        with torch.no_grad():
            self.blank.copy_(read.blank)
            self.log_scale.copy_(read.log_scale)
            if self.transform is not None and read.transform is not None:
                self.transform.copy_(read.transform)
        if read.layers is not None:
            self.layers = read.layers.to(self.blank.device).train(self.training)

    def greedy(self, positions: torch.Tensor) -> str:
        """The best path of one clip's [T, D] embeddings, repeats and blanks removed, as text."""
        return self.tokenizer.decode(best_path_ids(self.log_probs(positions))).strip()


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainLog:
    path: Path
    records: list[dict] = field(default_factory=list)

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def learning_rate_at(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.final_learning_rate_share
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_loss(
    model: nn.Module,
    compressor: nn.Module,
    prompt: PromptIds,
    tokenizer,
    feature_extractor,
    waveforms: list[np.ndarray],
    texts: list[str],
    ctc: CharacterCtc | TokenCtc | None,
    ctc_weight: float,
    read_answers: Callable[[list[list[int]]], list[list[int]]] | None = None,
    answer: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`read_answers`: what the decoder reads of the answers (`corrupted`); the labels stay true.
    `answer`: False for the CTC loss alone. A character CTC reads the tower's last layer, a token
    CTC the projected audio embeddings (compressed, as the decoder reads them)."""
    mel, mel_lengths = log_mel_batch(waveforms, feature_extractor)
    encoded = encode_batch(model.model.audio_tower, mel, mel_lengths)
    audio = compress_and_project(model, compressor, encoded)
    loss, parts = _answer_loss(model, prompt, tokenizer, audio, texts, read_answers, answer)
    if isinstance(ctc, TokenCtc):
        return _with_ctc_on_embeddings(loss, parts, ctc, ctc_weight, audio, texts)
    if ctc is not None:
        ctc_loss = ctc.loss(encoded.positions, encoded.position_counts, texts)
        parts["ctc_loss"] = float(ctc_loss.detach())
        loss = loss + ctc_weight * ctc_loss
    return loss, parts


def _answer_loss(
    model: nn.Module,
    prompt: PromptIds,
    tokenizer,
    audio: list[torch.Tensor],
    texts: list[str],
    read_answers: Callable[[list[list[int]]], list[list[int]]] | None,
    answer: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The decoder's loss on the answers after the audio (zero, not computed, when not `answer`)."""
    if not answer:
        return torch.zeros(()), {}
    answers = answer_token_ids(tokenizer, texts)
    inputs, mask, labels = decoder_inputs(
        model, prompt, audio, answers, read_answers(answers) if read_answers else None
    )
    loss = answer_loss(model, inputs, mask, labels)
    return loss, {"answer_loss": float(loss.detach())}


def _with_ctc_on_embeddings(
    loss: torch.Tensor,
    parts: dict[str, float],
    ctc: CharacterCtc | TokenCtc,
    ctc_weight: float,
    audio: list[torch.Tensor],
    texts: list[str],
) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss` plus a CTC's over the audio embeddings, weighted."""
    embedded = nn.utils.rnn.pad_sequence(audio, batch_first=True)
    ctc_loss = ctc.loss(embedded, torch.tensor([len(a) for a in audio]), texts)
    parts["ctc_loss"] = float(ctc_loss.detach())
    return loss + ctc_weight * ctc_loss, parts


def _padded(arrays: list[np.ndarray] | list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[B, longest, D] float32, zeros after each."""
    tensors = [torch.as_tensor(np.asarray(a, dtype=np.float32)) if isinstance(a, np.ndarray) else a for a in arrays]
    return nn.utils.rnn.pad_sequence(tensors, batch_first=True).to(device)


def tower_output(model: nn.Module, rows: list[list[np.ndarray]], below_layer: int | None) -> list[torch.Tensor]:
    """Each row's tower output [frames, d_model]: its stored clips end to end. Clips stored below a
    layer first go through the layers above, each clip alone, as the runtime encodes each window
    alone (with gradients where those layers train)."""
    if below_layer is None:
        return [torch.from_numpy(np.concatenate(parts).astype(np.float32)).to(model.device) for parts in rows]
    clips = [clip for parts in rows for clip in parts]
    tower = model.model.audio_tower
    encoded = encode_above(tower, _padded(clips, model.device), torch.tensor([len(c) for c in clips]), below_layer)
    frames = [encoded.frames[n, :count] for n, count in enumerate(encoded.frame_counts)]
    joined, start = [], 0
    for parts in rows:
        joined.append(torch.cat(frames[start : start + len(parts)]))
        start += len(parts)
    return joined


def projected_frames(
    model: nn.Module, compressor: nn.Module, rows: list[list[np.ndarray]], below_layer: int | None = None
) -> list[torch.Tensor]:
    """The stored clips of each row (`encoded_rows`), through the rest of the tower if stored below
    a layer, compressed and projected: [tokens, hidden] each."""
    frames = tower_output(model, rows, below_layer)
    empty = torch.zeros(0)
    encoded = EncodedAudio(_padded(frames, model.device), [len(f) for f in frames], empty, empty)
    return compress_and_project(model, compressor, encoded)


def frames_batch_loss(
    model: nn.Module,
    compressor: nn.Module,
    prompt: PromptIds,
    tokenizer,
    rows: list[list[np.ndarray]],
    texts: list[str],
    ctc: CharacterCtc | TokenCtc | None = None,
    ctc_weight: float = 0.0,
    read_answers: Callable[[list[list[int]]], list[list[int]]] | None = None,
    below_layer: int | None = None,
    answer: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`batch_loss` from precomputed tower data (`encoded_rows`; the tower frozen, or its top layers
    run here when `below_layer` says where the data was stored). The CTC head, if any, reads the
    projected audio embeddings: it is the projector (and tuned layers) that must learn to carry the
    speech's tokens."""
    audio = projected_frames(model, compressor, rows, below_layer)
    loss, parts = _answer_loss(model, prompt, tokenizer, audio, texts, read_answers, answer)
    return _with_ctc_on_embeddings(loss, parts, ctc, ctc_weight, audio, texts) if ctc is not None else (loss, parts)


def encoded_rows(
    data: EncodedDataset, indices: list[int], rng: np.random.Generator, joined: bool, max_frames: int
) -> tuple[list[list[np.ndarray]], list[str]]:
    """The batch's stored clips and answers, a list of clips per row; `joined`: each row is its clip
    followed by 1-3 random clips (up to `max_frames` stored frames), a long, multi-sentence example."""
    frames, answers = [], []
    for index in indices:
        clip_frames, text = data[index]
        parts, words = [clip_frames], [text] if text else []
        if joined:
            for extra in rng.choice(len(data), size=int(rng.integers(1, 4)), replace=False):
                more, more_text = data[int(extra)]
                if sum(len(p) for p in parts) + len(more) > max_frames:
                    break
                parts.append(more)
                words += [more_text] if more_text else []
        frames.append(parts)
        answers.append(" ".join(words))
    return frames, answers


def train(
    model: nn.Module,
    processor,
    train_data: SpeechDataset | EncodedDataset,
    test_data: SpeechDataset | EncodedDataset | None,
    out_dir: Path,
    settings: TrainSettings,
    *,
    compressor: nn.Module | None = None,
    ctc_alphabet: str | None = None,
    parameters: list[nn.Parameter] | None = None,
    save: Callable[[Path], None] | None = None,
    progress: bool = True,
    ctc_head: Path | None = None,
    lm_texts: list[str] | None = None,
    prompt: PromptIds | None = None,
) -> TrainLog:
    """Train `model` (in place, left in eval mode) and return the log; the caller saves it.
    `parameters` limits what is trained (LoRA); `save(folder)`, if given, writes a snapshot to
    out_dir/last every save_every steps (something to fall back on if a long run is stopped).
    `ctc_head`: a TokenCtc's blank and scale from an earlier stage (else they start afresh, and
    the first steps' CTC gradient is large). `prompt`: the ids around the audio (else the
    processor's chat template around the default prompt)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = TrainLog(out_dir / TRAIN_LOG_FILE)
    log.path.write_text("")
    write_json(out_dir / TRAIN_SETTINGS_FILE, asdict(settings))

    compressor = compressor if compressor is not None else nn.Identity()
    encoded = isinstance(train_data, EncodedDataset)
    below_layer = train_data.below_layer if isinstance(train_data, EncodedDataset) else None
    tower = model.model.audio_tower
    if encoded:
        tower.requires_grad_(False)
        if test_data is not None and getattr(test_data, "below_layer", None) != below_layer:
            raise ValueError("the held-out data is stored at another tower layer than the training data")
    tuned_tower: list[nn.Parameter] = []
    if settings.tune_tower_from is not None:
        if below_layer is None or settings.tune_tower_from < below_layer:
            raise ValueError(
                f"tuning the tower from layer {settings.tune_tower_from} needs encoded data stored below it "
                f"(this data: {'the tower output' if below_layer is None else f'below layer {below_layer}'})"
            )
        for module in [*tower.layers[settings.tune_tower_from :], tower.layer_norm]:
            module.requires_grad_(True)
            tuned_tower += list(module.parameters())
    prompt = prompt or PromptIds.from_processor(processor)
    tokenizer = processor.tokenizer
    lm_boundary = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    feature_extractor = processor.feature_extractor
    window_samples = processor.feature_extractor.n_samples
    sampling_rate = train_data.sampling_rate

    def read_answers(answers: list[list[int]]) -> list[list[int]]:
        return corrupted(answers, settings.token_corruption, tokenizer.vocab_size, rng)

    def rows_loss(rows: list, texts: list[str], training: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """Training: with the CTC loss and the corrupted answer inputs; else the plain answer loss."""
        head, weight, reader = (ctc, settings.ctc_weight, read_answers) if training else (None, 0.0, None)
        answer = settings.answer_loss or not training
        if encoded:
            return frames_batch_loss(
                model, compressor, prompt, tokenizer, rows, texts, head, weight, reader, below_layer, answer
            )
        return batch_loss(
            model, compressor, prompt, tokenizer, feature_extractor, rows, texts, head, weight, reader, answer
        )

    # On the tower's last layer when the tower trains; on the projected embeddings when it is frozen.
    ctc_width = model.config.text_config.hidden_size if encoded else model.config.audio_config.d_model
    ctc: CharacterCtc | TokenCtc | None = None
    if settings.ctc_layers_attention_span and not settings.ctc_layers:
        raise ValueError("ctc_layers_attention_span is the span of new CTC head layers, and ctc_layers asks for none")
    if settings.ctc_target == "tokens" and settings.ctc_weight > 0:
        embeddings = model.get_input_embeddings()
        width = embeddings.embedding_dim
        layers = None
        if settings.ctc_layers:
            heads = max(1, width // 64)  # a head 64 wide, as Whisper's and Qwen2's; a narrower model one head
            layers = CtcLayers(
                width, settings.ctc_layers, heads, 4 * width, settings.ctc_layers_dropout,
                settings.ctc_layers_attention_span,
            )  # fmt: skip
        ctc = TokenCtc(embeddings, tokenizer, realign=bool(settings.ctc_realign_to), layers=layers)
        ctc = ctc.to(model.device)
        if ctc_head is not None:
            ctc.load_head(ctc_head, settings.ctc_layers_dropout)
            if layers is not None and ctc.layers is not layers:
                raise EdgelalmError(
                    f"{ctc_head}: has layers of its own already, which this run would train on in place of the "
                    f"{settings.ctc_layers} new ones it asks for; start from a head without layers"
                )
    elif ctc_alphabet:
        ctc = CharacterCtc(ctc_width, ctc_alphabet).to(model.device)
    if not settings.answer_loss and ctc is None:
        raise ValueError("answer_loss=False trains the CTC head alone, and there is none (ctc_weight, ctc_target)")
    trained = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if ctc is not None:
        # TokenCtc's embeddings are the model's: trained with it where it trains, else not at all.
        known = {id(p) for p in trained} | {id(p) for p in model.get_input_embeddings().parameters()}
        trained = trained + [p for p in ctc.parameters() if id(p) not in known]
    in_tower = {id(p) for p in tuned_tower}
    groups = []
    for share, members in (
        (1.0, [p for p in trained if id(p) not in in_tower]),
        (settings.tower_learning_rate_share, tuned_tower),
    ):
        groups += [
            {"params": [p for p in members if p.ndim >= 2], "weight_decay": settings.weight_decay, "share": share},
            {"params": [p for p in members if p.ndim < 2], "weight_decay": 0.0, "share": share},
        ]
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]], lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    weights = None
    if settings.words_weight != 1.0:
        if not encoded:
            raise ValueError("words_weight needs encoded data (its records name each clip's kind)")
        kinds = np.array([record["kind"] for record in train_data.records])
        weights = np.where(kinds == "words", settings.words_weight, 1.0)
    batches = batch_indices(train_data.seconds, settings.batch_size, settings.bucket_batches, rng, weights)
    eval_indices = list(range(min(settings.eval_clips, len(test_data)))) if test_data is not None else []

    def evaluate() -> dict[str, float]:
        """The held-out answer loss, and with a TokenCtc the WER of its best path (does the
        projected audio carry the words, whatever the decoder makes of them?)."""
        assert test_data is not None  # only called when there is a test split
        model.eval()
        if ctc is not None:
            ctc.eval()  # its layers' dropout off
        losses, references, hypotheses = [], [], []
        with torch.no_grad():
            for start in range(0, len(eval_indices), settings.batch_size):
                items = [test_data[i] for i in eval_indices[start : start + settings.batch_size]]
                rows: list = [[w] for w, _ in items] if encoded else [w for w, _ in items]
                loss, _ = rows_loss(rows, [t for _, t in items], training=False)
                losses.append(float(loss) * len(items))
                if isinstance(ctc, TokenCtc):
                    for (_, text), audio in zip(
                        items, projected_frames(model, compressor, rows, below_layer), strict=True
                    ):
                        references.append(text)
                        hypotheses.append(ctc.greedy(audio))
        model.train()
        if ctc is not None:
            ctc.train()
        result = {"test_loss": sum(losses) / len(eval_indices)}
        if references:
            result["test_ctc_wer"] = score(references, hypotheses, 0, 1.0).wer
        return result

    model.train()
    started = time.perf_counter()
    window_loss: list[float] = []
    last_step = min(settings.steps, settings.stop_after or settings.steps)
    with Bar(last_step, "training", shown=progress) as bar:
        for step in range(last_step):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, settings) * group.get("share", 1.0)
            indices = next(batches)
            rows: list  # stored clips per row (encoded data) or waveforms
            if isinstance(train_data, EncodedDataset):
                # A whole batch of joined rows (a quarter as many, each several clips long): mixed with
                # single clips, every row would be padded to the longest.
                joined = rng.random() < settings.concat_probability
                if joined:
                    indices = indices[: max(1, len(indices) // 4)]
                # max_concat_frames counts the tower's output frames, not the stored rows
                most = settings.max_concat_frames * stored_per_frame(below_layer)
                rows, texts = encoded_rows(train_data, indices, rng, joined, most)
            else:
                rows, texts = [], []
                for index in indices:
                    samples, text = train_data[index]
                    if rng.random() < settings.augment_probability:
                        samples = fitted_augment(samples, window_samples, rng, sampling_rate)
                    rows.append(samples)
                    texts.append(text)
            loss, parts = rows_loss(rows, texts, training=True)
            if lm_texts and settings.lm_weight > 0:
                drawn = [lm_texts[int(i)] for i in rng.integers(len(lm_texts), size=settings.lm_batch_size)]
                token_rows = [ids[: settings.lm_max_tokens] for ids in answer_token_ids(tokenizer, drawn)]
                lm_loss = answer_loss(model, *text_inputs(model, token_rows, lm_boundary))
                parts["lm_loss"] = float(lm_loss.detach())
                loss = loss + settings.lm_weight * lm_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(trained, settings.max_grad_norm))
            loss_value = float(loss.detach())
            # A NaN here would be written into every trained weight, and saved with exit 0.
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                raise EdgelalmError(
                    f"training diverged at step {step + 1}: the loss is {loss_value:g} and the gradient "
                    f"norm {grad_norm:g} (a learning rate too high, or NaN or infinite values in the training data)"
                )
            optimizer.step()
            window_loss.append(loss_value)

            done = step + 1
            if done % 25 == 0 or done in (1, last_step):
                elapsed = time.perf_counter() - started
                record = {
                    "step": done,
                    "loss": float(np.mean(window_loss)),
                    **parts,
                    "grad_norm": grad_norm,
                    "learning_rate": learning_rate_at(step, settings),
                    "elapsed_s": round(elapsed, 1),
                }
                window_loss = []
                if eval_indices and (done % settings.eval_every == 0 or done == last_step):
                    record.update(evaluate())
                log.write(record)
                test = f" test {record['test_loss']:.3f}" if "test_loss" in record else ""
                bar.update(completed=done, status=f"loss {record['loss']:.3f}")
                bar.note(
                    f"step {done}/{last_step} loss {record['loss']:.3f}{test} lr {record['learning_rate']:.2e} "
                    f"{elapsed / done:.2f} s/step"
                )
            if save is not None and (done % settings.save_every == 0) and done < last_step:
                save(out_dir / "last")
                if isinstance(ctc, TokenCtc):
                    ctc.save_head(out_dir / RUN_CTC_HEAD_FILE, settings.ctc_realign_to)
    model.eval()
    if isinstance(ctc, TokenCtc):  # its blank and scale: a later stage goes on from them
        ctc.save_head(out_dir / RUN_CTC_HEAD_FILE, settings.ctc_realign_to)
    return log


def plot_losses(log: TrainLog, path: Path, title: str) -> None:
    """Training and held-out loss against step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log.records]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [r["loss"] for r in log.records], label="train loss (total)")
    if any("answer_loss" in r for r in log.records):
        axis.plot(steps, [r.get("answer_loss", np.nan) for r in log.records], label="train answer loss", alpha=0.6)
    tested = [r for r in log.records if "test_loss" in r]
    if tested:
        axis.plot([r["step"] for r in tested], [r["test_loss"] for r in tested], "o-", label="held-out answer loss")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
