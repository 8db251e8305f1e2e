"""The default model's training data as the frozen audio tower's output (issue 15).

    build_encoded("data3/train", "train", count=48000, seed=0, checkpoint="build/default-model/init")
    data = EncodedDataset("data3/train")
    frames, text = data[0]              # float16 [frames, d_model] at 25 frames/s, normalised text
    build_encoded(..., below_layer=2)   # or the hidden states entering layer 2, 50 positions/s,
                                        # so that training can tune the layers above

Each clip is a `corpus` text spoken by a voice of `synthesizers.training_voices(split)` (espeak-ng
and festival, about half each), or silence/noise for the "silence" kind; then augmented once, all
draws seeded by (seed, index): speed perturbation, gain, reverb, padding silence, noise, an 8 kHz
telephone line. The checkpoint's audio tower (frozen in training) encodes it at the clip's own
length, exactly as the runtime's encoder does. Storing the tower's output instead of audio is what
makes training fit 2 CPU cores: the tower is most of the compute and never changes. Stored part of
the way up (`below_layer`), the frozen lower layers are computed once and the top ones can train.

The folder:

    dataset.json        format, split, count, seed, corpus version, the tower's checkpoint and hash, shards
    metadata.jsonl      per clip: index, kind, text, voice, tempo, pitch, augment, seconds, shard, offset, frames
    frames-00000.npy    float16 [frames, d_model], every clip of the shard end to end (plain .npy)
    audio-00000.npy     int16 16 kHz audio of the same clips (only with keep_audio: evaluation sets)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgelalm.checks import is_whole_number
from edgelalm.constants import ENCODER_FRAMES_PER_SECOND, SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.files import atomic_folder, check_replaceable, link_or_copy, read_json_object
from edgelalm.progress import Bar
from edgelalm.training import corpus, speech, synthesizers, texts
from edgelalm.training.dataset import check_spans, map_shard, owns_dataset_file, read_folder
from edgelalm.training.texts import Split

FORMAT = "edgelalm-encoded-dataset"
FORMAT_VERSION = 1
SHARD_CLIPS = 4000
ENGINE_SHARE = {"espeak-ng": 0.55, "festival": 0.45}
SILENCE_SECONDS = (0.5, 8.0)
SPEED_PERTURB_PROBABILITY, SPEED_FACTORS = 0.5, (0.9, 1.1)
TELEPHONE_PROBABILITY = 0.1
CLEAN_PROBABILITY = 0.15  # left as rendered (only padded with a little silence)
_INT16_SCALE = 32767.0
# Stored below a tower layer, a clip has two positions per output frame (the tower's stride-2 pool).
POSITIONS_PER_FRAME = 2


def stored_per_frame(below_layer: int | None) -> int:
    """Stored rows per tower output frame: 1 for the output itself, 2 below a layer."""
    return 1 if below_layer is None else POSITIONS_PER_FRAME


def _stored_rate(below_layer: int | None) -> int:
    return int(ENCODER_FRAMES_PER_SECOND) * stored_per_frame(below_layer)


def tower_digest(checkpoint: str | os.PathLike[str], below_layer: int | None = None) -> str:
    """sha256 of the checkpoint's audio-tower tensors, by name, as float32: which tower encoded a
    folder. The stored dtype does not count (the shipped float16 copy of a tower whose values are
    float16, as Whisper's are, has the digest of its float32 original). `below_layer`: only what
    runs below that layer (the convolutions, positions and lower layers), for a folder that stores
    the hidden states there: the layers above may be tuned without invalidating it."""
    import hashlib
    import re

    import torch

    from edgelalm.export.checkpoint import AUDIO_TOWER_PREFIXES, open_checkpoint

    def below(name: str) -> bool:  # names without the tower's prefix: layers.3.fc1.weight
        layer = re.match(r"layers\.(\d+)\.", name)
        if layer:
            return below_layer is not None and int(layer.group(1)) < below_layer
        return not name.startswith("layer_norm.")

    digest = hashlib.sha256()
    for name, tensor in sorted(open_checkpoint(Path(checkpoint)).tensors(AUDIO_TOWER_PREFIXES)):
        if below_layer is None or below(name):
            digest.update(name.encode() + b"\0" + tensor.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Clip:
    index: int
    kind: str
    spoken: str
    text: str
    voice: str
    tempo: float
    pitch: int


def plan(
    split: Split,
    seed: int,
    voices: tuple[str, ...] | None = None,
    long: bool = False,
    sentences: Path | None = None,
) -> Iterator[Clip]:
    """The endless, deterministic stream of clips for (split, seed); `voices` overrides the voice
    choice (the never-heard set: synthesizers.UNHEARD_VOICES); `long`: corpus.iter_long_texts;
    `sentences`: a file's sentences instead of the mixture (corpus.iter_sentence_texts)."""
    pool = voices or synthesizers.training_voices(split)
    by_engine: dict[str, list[str]] = {}
    for voice in pool:
        by_engine.setdefault(synthesizers.engine_of(voice)[0], []).append(voice)
    engines = sorted(by_engine)
    shares = np.array([ENGINE_SHARE.get(engine, 1.0) for engine in engines])
    shares /= shares.sum()
    if sentences is not None:
        stream = corpus.iter_sentence_texts(sentences, seed)
    else:
        stream = corpus.iter_long_texts(split, seed) if long else corpus.iter_texts(split, seed)
    for index, text in enumerate(stream):
        rng = np.random.default_rng([seed, index, 0xC11F])
        engine = engines[int(rng.choice(len(engines), p=shares))]
        voice = by_engine[engine][int(rng.integers(len(by_engine[engine])))]
        tempo = round(float(rng.uniform(0.8, 1.25)), 3)
        pitch = int(rng.integers(25, 76))
        yield Clip(index, text.kind, text.spoken, text.transcript, voice, tempo, pitch)


def augmented(samples: np.ndarray, rng: np.random.Generator, always: bool = False) -> tuple[np.ndarray, list[str]]:
    """One seeded variation of a rendered clip and the names of what was applied. `always`: never
    left clean and always speed-perturbed (a recording's variation, beside the recording itself)."""
    applied = []
    if not always and rng.random() < CLEAN_PROBABILITY:
        quiet = speech.pad_silence(samples, int(rng.integers(0, 4000)), int(rng.integers(0, 4000)))
        return quiet, ["clean"]
    if always or rng.random() < SPEED_PERTURB_PROBABILITY:
        samples = speech.speed_perturb(samples, float(rng.uniform(*SPEED_FACTORS)))
        applied.append("speed")
    samples = speech.augment(samples, rng)
    applied.append("augment")
    if rng.random() < TELEPHONE_PROBABILITY:
        samples = speech.telephone_band(samples)
        applied.append("telephone")
    return np.clip(samples, -1.0, 1.0).astype(np.float32), applied


def recording_variation(samples: np.ndarray, augment_seed: int, index: int) -> tuple[np.ndarray, list[str]]:
    """Recording `index`'s variation under `augment_seed` (build_encoded_recordings): `augmented`,
    never left clean, always speed-perturbed, seeded by the pair."""
    return augmented(samples, np.random.default_rng([augment_seed, index, 0x2EC]), always=True)


# ---------------------------------------------------------------------------------------------
# Workers: render, augment, encode. The tower is loaded once per worker process.

_TOWER: dict[str, object] = {}


def _tower(checkpoint: str):
    """A worker's tower and feature extractor, loaded once; one thread a worker."""
    if checkpoint not in _TOWER:
        import torch

        torch.set_num_threads(1)
        _TOWER[checkpoint] = _load_tower(checkpoint)
    return _TOWER[checkpoint]


def _load_tower(checkpoint: str):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, use_safetensors=True)
    return model.model.audio_tower.eval(), WhisperFeatureExtractor.from_pretrained(checkpoint)


def _work(
    job: tuple[list[Clip], int, str, float, int | None],
) -> list[tuple[Clip, np.ndarray, np.ndarray, list[str]]]:
    clips, seed, checkpoint, max_seconds, below_layer = job
    tower, extractor = _tower(checkpoint)
    speaking = [clip for clip in clips if clip.kind != "silence"]
    rendered = dict(
        zip(
            (clip.index for clip in speaking),
            synthesizers.render_all([synthesizers.Request(c.spoken, c.voice, c.tempo, c.pitch) for c in speaking]),
            strict=True,
        )
    )
    results = []
    for clip in clips:
        rng = np.random.default_rng([seed, clip.index, 0xA06])
        if clip.kind == "silence":
            samples, applied = speech.silence_or_noise(float(rng.uniform(*SILENCE_SECONDS)), rng), ["silence"]
        else:
            samples, applied = augmented(rendered[clip.index], rng)
        if len(samples) > max_seconds * SAMPLING_RATE:
            continue
        results.append((clip, samples, applied))
    results.sort(key=lambda item: len(item[1]))
    stored = _tower_frames(tower, extractor, [samples for _, samples, _ in results], below_layer)
    out = [
        (clip, frames, np.round(samples * _INT16_SCALE).astype(np.int16), applied)
        for (clip, samples, applied), frames in zip(results, stored, strict=True)
    ]
    out.sort(key=lambda item: item[0].index)
    return out


def _tower_frames(tower, extractor, clips: list[np.ndarray], below_layer: int | None) -> list[np.ndarray]:
    """Each clip through the tower at its own length (8 a batch, in the order given: sorted by
    length, a batch pads little): float16 frames, or the positions entering `below_layer`."""
    import torch

    from edgelalm.training.model import encode_batch, encode_below, log_mel_batch

    out = []
    for start in range(0, len(clips), 8):
        group = clips[start : start + 8]
        mel, lengths = log_mel_batch(group, extractor)
        with torch.no_grad():
            if below_layer is None:
                encoded = encode_batch(tower, mel, lengths)
                stored, counts = encoded.frames, encoded.frame_counts
            else:
                stored, position_counts = encode_below(tower, mel, lengths, below_layer)
                counts = [int(count) for count in position_counts]
        out += [stored[row, : counts[row]].numpy().astype(np.float16) for row in range(len(group))]
    return out


def _encoded(
    stream: Iterator[Clip],
    seed: int,
    checkpoint: str,
    max_seconds: float,
    workers: int,
    chunk: int,
    below_layer: int | None,
) -> Generator[tuple[Clip, np.ndarray, np.ndarray, list[str]], None, None]:
    def jobs(how_many: int) -> list[tuple[list[Clip], int, str, float, int | None]]:
        return [
            ([next(stream) for _ in range(chunk)], seed, checkpoint, max_seconds, below_layer) for _ in range(how_many)
        ]

    if workers <= 1:
        while True:
            yield from _work(jobs(1)[0])
    context = multiprocessing.get_context("spawn")  # safe whatever the parent has loaded (torch)
    pool = context.Pool(workers)
    try:
        while True:  # a bounded batch of jobs at a time: Pool.imap would drain an endless iterable
            for results in pool.imap(_work, jobs(2 * workers)):
                yield from results
    finally:
        # Closed early (count reached): let the jobs in flight finish; terminating workers mid-send
        # prints their broken-pipe tracebacks.
        pool.close()
        pool.join()


def build_encoded(
    out_dir: str | os.PathLike[str],
    split: Split,
    count: int,
    seed: int,
    checkpoint: str | os.PathLike[str],
    *,
    voices: tuple[str, ...] | None = None,
    keep_audio: bool = False,
    workers: int = 2,
    max_seconds: float = 30.0,
    progress: bool = True,
    overwrite: bool = False,
    long: bool = False,
    below_layer: int | None = None,
    sentences: str | os.PathLike[str] | None = None,
) -> Path:
    """Render, augment and encode `count` clips of `split` into `out_dir` (atomically).
    `below_layer`: store the tower's hidden states entering that layer (50 positions/s) instead of
    its output, so that training can tune the layers above. `sentences`: a file of sentences, one
    per line, read instead of the mixture (training prose: they are not checked against the splits)."""
    texts.check_split(split)
    if count < 1:
        raise EdgelalmError(f"count must be at least 1, got {count}")
    if below_layer is not None and below_layer < 1:
        # Whisper's positions are added before layer 0: stored there, the layers above would add them again.
        raise EdgelalmError(f"below_layer must be at least 1, got {below_layer}")
    out = Path(out_dir)
    check_replaceable(out, overwrite, "dataset.json", owns_dataset_file, force_option="overwrite=True")
    started = time.perf_counter()
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": split,
        "count": count,
        "seed": seed,
        "corpus_version": corpus.CORPUS_VERSION,
        "long": long,
        "sentences": str(sentences) if sentences else None,
        "voices": list(voices or synthesizers.training_voices(split)),
        "checkpoint": str(checkpoint),
        "tower_digest": tower_digest(checkpoint, below_layer),
        "below_layer": below_layer,
        "frames_per_second": _stored_rate(below_layer),
        "sampling_rate": SAMPLING_RATE,
    }
    clips = plan(split, seed, voices, long, Path(sentences) if sentences else None)
    with closing(_encoded(clips, seed, str(checkpoint), max_seconds, workers, 32, below_layer)) as stream:
        records = (
            {**asdict(clip), "augment": applied} | {"frames": frames, "audio": audio}
            for clip, frames, audio, applied in stream
        )
        _, total_seconds = _write_folder(
            out, records, count, info, keep_audio, f"{split} ({count})" if progress else None
        )
    if progress:
        took = time.perf_counter() - started
        print(
            f"{out}: {count} clips, {total_seconds / 3600:.2f} h of audio, {took:.0f} s "
            f"({1000 * took / count:.0f} ms per clip)",
            file=sys.stderr,
        )
    return out


def _write_folder(
    out: Path, clips: Iterator[dict], count: int, info: dict, keep_audio: bool, progress: str | None
) -> tuple[int, float]:
    """The first `count` of `clips` (each its metadata record, its "frames" and int16 "audio")
    into `out` atomically: shards of SHARD_CLIPS, metadata.jsonl, and dataset.json (`info`, the
    total seconds and the shards). Returns the clips and seconds written; `progress`: the bar's label."""
    shards: list[dict] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    offsets = [0, 0]
    total_seconds = 0.0
    with atomic_folder(out, force=True, marker="dataset.json", owned=owns_dataset_file) as partial:

        def flush() -> None:
            number = len(shards)
            frames = np.concatenate([f for f, _ in pending])
            np.save(partial / f"frames-{number:05d}.npy", frames, allow_pickle=False)
            shard = {"frames": f"frames-{number:05d}.npy", "clips": len(pending), "frame_count": int(frames.shape[0])}
            if keep_audio:
                np.save(
                    partial / f"audio-{number:05d}.npy", np.concatenate([a for _, a in pending]), allow_pickle=False
                )
                shard["audio"] = f"audio-{number:05d}.npy"
            shards.append(shard)
            pending.clear()
            offsets[:] = [0, 0]

        written = 0
        with (
            open(partial / "metadata.jsonl", "w", encoding="utf-8") as metadata,
            Bar(count, progress or "", shown=progress is not None) as bar,
        ):
            for clip in clips:
                frames, audio = clip.pop("frames"), clip.pop("audio")
                seconds = audio.size / SAMPLING_RATE
                record = {
                    **clip,
                    "seconds": round(seconds, 4),
                    "shard": len(shards),
                    "offset": offsets[0],
                    "frames": int(frames.shape[0]),
                }
                if keep_audio:
                    record |= {"audio_offset": offsets[1], "samples": int(audio.size)}
                metadata.write(json.dumps(record, ensure_ascii=False) + "\n")
                pending.append((frames, audio))
                offsets[0] += frames.shape[0]
                offsets[1] += audio.size
                total_seconds += seconds
                written += 1
                bar.update(completed=written)
                if len(pending) == SHARD_CLIPS:
                    flush()
                if written == count:
                    break
        if pending:
            flush()
        folder = {**info, "count": written, "total_seconds": round(total_seconds, 2), "shards": shards}
        (partial / "dataset.json").write_text(json.dumps(folder, indent=2) + "\n", encoding="utf-8")
    return written, total_seconds


def build_encoded_recordings(
    out_dir: str | os.PathLike[str],
    transcripts: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    split: Split = "train",
    keep_audio: bool = False,
    max_seconds: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    augment_seed: int | None = None,
) -> Path:
    """Recorded clips encoded by `checkpoint`'s tower into `out_dir`, a folder that reads and
    joins as `build_encoded`'s of the same split: people's voices beside the synthesizers'.
    `transcripts`: a TSV with 'file' and 'transcript' columns, paths relative to it (and
    optionally 'speaker'), as wer_table.py and finetune read. As recorded (a recording brings its
    own room and line), or with `augment_seed` each one's seeded variation (`recording_variation`:
    played 0.9-1.1x as fast, gain, maybe reverb, noise and a telephone line), a folder to train on
    beside the recordings' own; transcripts in the normal form (texts.normalize_transcript); clips
    longer than `max_seconds` (default: past the tower's window), or with nothing to say once
    normalised, left out."""
    from edgelalm.runtime.features import valid_mel_frames
    from edgelalm.training.finetune import PairedAudio

    texts.check_split(split)
    if augment_seed is not None and augment_seed < 0:
        raise EdgelalmError(f"augment_seed must be 0 or more, not {augment_seed}")
    table = Path(transcripts)
    recordings = PairedAudio(table, SAMPLING_RATE, normalize=True)  # every file checked before any work
    out = Path(out_dir)
    check_replaceable(out, overwrite, "dataset.json", owns_dataset_file, force_option="overwrite=True")
    tower, extractor = _load_tower(str(checkpoint))  # in this process, its threads
    kept = [index for index, text in enumerate(recordings.texts) if text]
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": split,
        "count": len(kept),  # less the clips too long, once written
        "recordings": str(table),
        "augment_seed": augment_seed,
        "checkpoint": str(checkpoint),
        "tower_digest": tower_digest(checkpoint),
        "below_layer": None,
        "frames_per_second": _stored_rate(None),
        "sampling_rate": SAMPLING_RATE,
    }

    def clips() -> Iterator[dict]:
        for start in range(0, len(kept), 64):  # read, encode and hand on 64 at a time
            batch = []
            for index in kept[start : start + 64]:
                samples, _ = recordings[index]
                applied: list[str] = []
                if augment_seed is not None:
                    samples, applied = recording_variation(samples, augment_seed, index)
                in_window = valid_mel_frames(len(samples), extractor.hop_length) <= extractor.nb_max_frames
                if in_window and (max_seconds is None or len(samples) <= max_seconds * SAMPLING_RATE):
                    batch.append((index, samples, applied))
            batch.sort(key=lambda item: len(item[1]))
            stored = _tower_frames(tower, extractor, [samples for _, samples, _ in batch], None)
            for (index, samples, applied), frames in sorted(
                zip(batch, stored, strict=True), key=lambda item: item[0][0]
            ):
                row = recordings.rows[index]
                yield {
                    "index": index,
                    "kind": "recording",
                    "spoken": row["transcript"],
                    "text": recordings.texts[index],
                    "voice": f"recording:{row.get('speaker', '')}",
                    "file": row["file"],
                    "augment": applied,
                    "frames": frames,
                    "audio": np.round(np.clip(samples, -1.0, 1.0) * _INT16_SCALE).astype(np.int16),
                }

    written, total_seconds = _write_folder(
        out, clips(), len(kept), info, keep_audio, f"{table.name} ({len(kept)})" if progress else None
    )
    if progress:
        print(f"{out}: {written} recordings, {total_seconds / 3600:.2f} h of audio", file=sys.stderr)
    return out


def encode_further(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    below_layer: int | None = None,
    *,
    batch_clips: int = 32,
    progress: bool = True,
) -> Path:
    """A folder stored below a tower layer, carried further up by `checkpoint`'s tower: to below
    `below_layer`, or (None) to the tower's output at 25 frames/s, as `build_encoded` would have
    stored it with that tower. What stays frozen is then computed once instead of every step: a
    training run that tunes only the top layer, or a realignment of a tuned model. The clips,
    texts and audio are the source's (audio shards hard-linked when the file system allows)."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    from edgelalm.training.model import encode_above, encode_between

    data = EncodedDataset(source)
    data.check_tower(checkpoint)
    start = data.below_layer
    if start is None or (below_layer is not None and below_layer <= start):
        raise EdgelalmError(
            f"{source}: stored {'as the tower output' if start is None else f'below layer {start}'}; "
            f"cannot be carried to {'the output' if below_layer is None else f'below layer {below_layer}'}"
        )
    out = Path(out_dir)
    if out.exists():
        raise EdgelalmError(f"{out} already exists")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, use_safetensors=True)
    tower = model.model.audio_tower.eval()
    records: list[dict] = []
    shards: list[dict] = []
    with (
        atomic_folder(out, force=False) as partial,
        Bar(len(data), f"{source} -> {out}", shown=progress) as bar,
    ):
        for number, shard in enumerate(data.info["shards"]):
            members = [i for i, record in enumerate(data.records) if record["shard"] == number]
            carried: dict[int, np.ndarray] = {}
            by_length = sorted(members, key=lambda i: data.records[i]["frames"])  # little padding
            for first in range(0, len(by_length), batch_clips):
                batch = by_length[first : first + batch_clips]
                clips = [torch.from_numpy(data[i][0].astype(np.float32)) for i in batch]
                counts = torch.tensor([len(clip) for clip in clips])
                padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
                with torch.no_grad():
                    if below_layer is None:
                        encoded = encode_above(tower, padded, counts, start)
                        hidden, kept = encoded.frames, encoded.frame_counts
                    else:
                        hidden = encode_between(tower, padded, counts, start, below_layer)
                        kept = [int(count) for count in counts]
                for row, index in enumerate(batch):
                    carried[index] = hidden[row, : kept[row]].numpy().astype(np.float16)
                bar.update(completed=len(records) + len(carried))
            offset = 0
            for index in members:
                records.append({**data.records[index], "offset": offset, "frames": int(carried[index].shape[0])})
                offset += carried[index].shape[0]
            frames_file = f"frames-{number:05d}.npy"
            np.save(partial / frames_file, np.concatenate([carried[i] for i in members]), allow_pickle=False)
            entry = {**shard, "frames": frames_file, "frame_count": offset}
            if "audio" in shard:
                link_or_copy(Path(source) / shard["audio"], partial / shard["audio"])
            shards.append(entry)
        with open(partial / "metadata.jsonl", "w", encoding="utf-8") as metadata:
            for record in records:
                metadata.write(json.dumps(record, ensure_ascii=False) + "\n")
        info = {
            **data.info,
            "checkpoint": str(checkpoint),
            "tower_digest": tower_digest(checkpoint, below_layer),
            "below_layer": below_layer,
            "frames_per_second": _stored_rate(below_layer),
            "shards": shards,
            "carried_from": {"folder": str(source), "below_layer": start},
        }
        (partial / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def is_encoded_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds a `build_encoded` dataset (else another kind, or none)."""
    info = Path(folder) / "dataset.json"
    # Unreadable: read as the other kind, whose reader says what is wrong in one line.
    with suppress(EdgelalmError, OSError):
        return info.is_file() and read_json_object(info).get("format") == FORMAT
    return False


def _join_key(info: dict) -> tuple[object, object, object]:
    """What folders read as one set share: the tower that wrote them, the split, the layer."""
    return info.get("tower_digest"), info.get("split"), info.get("below_layer")


def check_joinable(folders: Sequence[Path]) -> None:
    """Refuse, in one line, folders that cannot be read as one set: one given twice (its clips
    would train twice, unwarned), or one of another tower, split or layer than the first. Reads only
    each folder's dataset.json: finetune calls it before the model's load."""
    seen: set[Path] = set()
    first: tuple[object, object, object] | None = None
    for folder in folders:
        resolved = folder.resolve()
        if resolved in seen:
            raise EdgelalmError(f"{folder}: given twice; its clips would be read twice")
        seen.add(resolved)
        if not (folder / "dataset.json").is_file():
            continue  # read_folder says what is missing
        key = _join_key(read_json_object(folder / "dataset.json"))
        if first is None:
            first = key
        elif key != first:
            raise EdgelalmError(f"{folder}: another tower or split than {folders[0]}; cannot be joined")


class EncodedDataset:
    """Folders written by `build_encoded`, read as one: `data[i]` -> (float16 frames [F, D], text);
    `data.audio(i)` -> float32 samples where the audio was kept. Several folders (the same split,
    more seeds) must come from the same tower. `first_clips`: read only that many clips of the
    first folder (a seed's stream is the same whatever count it was built with, so these are the
    clips a build of that count holds); the others whole."""

    def __init__(
        self, directory: str | os.PathLike[str], *more: str | os.PathLike[str], first_clips: int | None = None
    ) -> None:
        self.directories = [Path(directory), *map(Path, more)]
        self.directory = self.directories[0]
        self.records: list[dict] = []
        self._folder_of: list[int] = []
        self._infos: list[dict] = []
        self.width: int | None = None  # the frames' width, the same in every folder
        self._mapped: dict[Path, np.ndarray] = {}  # shards mapped as they are checked, or on first use
        if more:
            check_joinable(self.directories)
        for number, folder in enumerate(self.directories):
            info, records = read_folder(folder, FORMAT, FORMAT_VERSION)
            if number == 0 and first_clips is not None:
                if not 1 <= first_clips <= len(records):
                    raise EdgelalmError(f"{folder}: first_clips must be 1-{len(records)}, got {first_clips}")
                records = records[:first_clips]
            self._check_frames(folder, info, records)
            self._infos.append(info)
            self.records += records
            self._folder_of += [number] * len(records)
        self.info = self._infos[0]
        self.texts = [record["text"] for record in self.records]
        self.seconds = np.array([record["seconds"] for record in self.records], dtype=np.float64)
        self.frame_counts = np.array([record["frames"] for record in self.records], dtype=np.int64)
        self.sampling_rate = int(self.info["sampling_rate"])
        # None: `data[i]` is the tower's output (25 frames/s); else the hidden states entering this
        # layer (50 positions/s), for training that tunes the layers above (model.encode_above).
        self.below_layer: int | None = self.info.get("below_layer")

    def _check_frames(self, folder: Path, info: dict, records: list[dict]) -> None:
        """Every frames shard a 2-D float array of one width, every clip's rows inside its shard
        and no longer than its seconds say (a record that lied trained on nothing, or failed in
        torch's matmul)."""
        below_layer = info.get("below_layer")
        if below_layer is not None and not is_whole_number(below_layer):
            raise EdgelalmError(f"{folder}/dataset.json: below_layer must be a layer number, got {below_layer!r}")
        shards = []
        for shard in info["shards"]:
            name = shard.get("frames")
            if not isinstance(name, str) or Path(name).name != name:
                raise EdgelalmError(
                    f"{folder}/dataset.json: a shard's frames must be a file in the folder, got {name!r}"
                )
            self._mapped[folder / name] = map_shard(folder / name, 2, "f")
            shards.append(self._mapped[folder / name])
        widths = {shard.shape[1] for shard in shards} | ({self.width} if self.width is not None else set())
        if len(widths) != 1:
            raise EdgelalmError(f"{folder}: frames of widths {sorted(widths)} in one dataset")
        self.width = widths.pop()
        check_spans(folder, records, shards, "frames")
        rate = _stored_rate(below_layer)
        for number, record in enumerate(records, start=1):
            if record["frames"] > (record["seconds"] + 0.1) * rate:
                raise EdgelalmError(
                    f"{folder}: clip {number} has {record['frames']} rows, {record['frames'] / rate:.1f} s at "
                    f"{rate} a second, but says it lasts {record['seconds']} s"
                )

    def check_tower(self, checkpoint: str | os.PathLike[str]) -> None:
        """Refuse a checkpoint whose audio tower is not the one that encoded these frames."""
        stored = self.info.get("tower_digest")
        if stored is None:
            raise EdgelalmError(f"{self.directory} does not record which audio tower encoded it (no tower_digest)")
        if tower_digest(checkpoint, self.below_layer) != stored:
            raise EdgelalmError(
                f"{self.directory} was encoded by another audio tower than {checkpoint}'s "
                "(frames are only valid for the tower that made them)"
            )

    def _shard(self, index: int, kind: str) -> np.ndarray:
        folder = self._folder_of[index]
        shard = self._infos[folder]["shards"][self.records[index]["shard"]]
        if kind not in shard:
            raise EdgelalmError(f"{self.directories[folder]} keeps no {kind} (built without keep_audio)")
        path = self.directories[folder] / shard[kind]
        if path not in self._mapped:
            self._mapped[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._mapped[path]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": {}}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        record = self.records[index]
        frames = self._shard(index, "frames")[record["offset"] : record["offset"] + record["frames"]]
        return np.asarray(frames), record["text"]

    def audio(self, index: int) -> np.ndarray:
        samples = self._shard(index, "audio")
        record = self.records[index]
        start = record["audio_offset"]
        return samples[start : start + record["samples"]].astype(np.float32) / np.float32(_INT16_SCALE)

    def __repr__(self) -> str:
        folders = ", ".join(repr(str(directory)) for directory in self.directories)
        return f"EncodedDataset({folders}: {self.info['split']}, {len(self)} clips)"
