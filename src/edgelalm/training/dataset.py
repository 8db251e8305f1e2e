"""A rendered split on disk, and its reader.

    build_dataset("data/train", "train", count=30000, seed=0)
    dataset = SpeechDataset("data/train")
    samples, text = dataset[0]          # float32 at dataset.sampling_rate, normalised text

The folder:

    dataset.json        split, count, seed, grammar version, sampling rate, shards, espeak-ng and library versions
    metadata.jsonl      one line per utterance: text, voice, speed, pitch, shard, offset, length, seconds
    shard-00000.npy     int16, every clip of the shard end to end (plain .npy; never pickled)

Utterance i (in order) is `texts.iter_utterances(split, seed, grammar_version)`'s i-th sentence, spoken by a voice of
`speech.voices(split)` at a speed and pitch drawn from a generator seeded by (seed, i): the same
arguments build the same bytes, whatever the number of workers. Clips longer than `max_seconds` are
skipped and the next sentences rendered instead, so the dataset always holds `count` utterances.
Augmentation is the training loop's business (`speech.augment`); nothing augmented is stored.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgelalm.checks import is_finite_number, is_whole_number
from edgelalm.constants import SAMPLING_RATE
from edgelalm.errors import EdgelalmError
from edgelalm.files import atomic_folder, check_replaceable, read_json_object
from edgelalm.manifest import SAMPLING_RATES
from edgelalm.progress import Bar
from edgelalm.training import speech, texts
from edgelalm.training.texts import Split

FORMAT = "edgelalm-speech-dataset"
FORMAT_VERSION = 1
SPEED_RANGE_WPM = (120, 210)  # espeak-ng's default is 175
PITCH_RANGE = (25, 75)  # espeak-ng's default is 50
SHARD_UTTERANCES = 5000
_INT16_SCALE = 32767.0


@dataclass(frozen=True)
class Utterance:
    index: int  # position in the split's sentence stream (skipped ones included)
    text: str
    voice: str
    speed: int
    pitch: int


def plan(split: Split, seed: int, grammar_version: int = texts.GRAMMAR_VERSION) -> Iterator[Utterance]:
    """The endless, deterministic stream of what to render for (split, seed, grammar version)."""
    voices = speech.voices(split)
    for index, text in enumerate(texts.iter_utterances(split, seed, grammar_version)):
        rng = np.random.default_rng([seed, index, 0x5EEC])
        voice = voices[int(rng.integers(len(voices)))]
        speed = int(rng.integers(SPEED_RANGE_WPM[0], SPEED_RANGE_WPM[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        yield Utterance(index, text, voice, speed, pitch)


def _render(item: tuple[Utterance, int]) -> tuple[Utterance, np.ndarray]:
    utterance, sampling_rate = item
    samples = speech.render(utterance.text, utterance.voice, utterance.speed, utterance.pitch, sampling_rate)
    audio = np.round(np.clip(samples, -1.0, 1.0) * _INT16_SCALE).astype(np.int16)
    return utterance, audio


class _RenderProgress:
    """The rendering's bar, and a line per `every` utterances with the time they took."""

    def __init__(self, total: int, title: str, shown: bool, every: int = 100) -> None:
        self.bar = Bar(total, title, shown=shown)
        self.total, self.every = total, every
        self.last = time.perf_counter()
        self.last_audio_s = 0.0

    def __enter__(self) -> _RenderProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__()

    def update(self, done: int, audio_s: float) -> None:
        self.bar.update(completed=done)
        if done % self.every == 0 or done == self.total:
            now = time.perf_counter()
            took, audio = now - self.last, audio_s - self.last_audio_s
            count = self.every if done % self.every == 0 else done % self.every
            speed = audio / took if took > 0 else 0
            self.bar.note(
                f"{done}/{self.total}: {took:.2f} s for the last {count} "
                f"({audio:.0f} s of audio, {speed:.0f}x real time)"
            )
            self.last, self.last_audio_s = now, audio_s


def _rendered(
    stream: Iterator[Utterance], sampling_rate: int, workers: int, batch: int
) -> Generator[tuple[Utterance, np.ndarray], None, None]:
    """(utterance, int16 audio) in plan order, rendered `workers` at a time."""
    if workers <= 1:
        for utterance in stream:
            yield _render((utterance, sampling_rate))
        return
    context = multiprocessing.get_context("spawn")  # safe whatever the parent has loaded (torch)
    with context.Pool(workers) as pool:
        while True:
            items = [(next(stream), sampling_rate) for _ in range(batch)]
            yield from pool.imap(_render, items, chunksize=4)


def build_dataset(
    out_dir: str | os.PathLike[str],
    split: Split,
    count: int,
    seed: int,
    workers: int = 2,
    progress: bool = True,
    max_seconds: float = 10.0,
    sampling_rate: int = SAMPLING_RATE,
    shard_utterances: int = SHARD_UTTERANCES,
    overwrite: bool = False,
    grammar_version: int = texts.GRAMMAR_VERSION,
) -> Path:
    """Render `count` utterances of `split` into `out_dir` (see the module docstring); returns it.

    Written into a hidden folder beside `out_dir` and renamed into place at the end: an
    interrupted build leaves no half dataset. An existing `out_dir` is replaced only with
    `overwrite`.
    """
    texts.check_split(split)
    if count < 1:
        raise EdgelalmError(f"count must be at least 1, got {count}")
    if shard_utterances < 1:
        raise EdgelalmError(f"shard_utterances must be at least 1, got {shard_utterances}")
    if grammar_version not in texts.GRAMMAR_VERSIONS:
        raise EdgelalmError(f"grammar version must be one of {texts.GRAMMAR_VERSIONS}, got {grammar_version}")
    out = Path(out_dir)
    check_replaceable(out, overwrite, "dataset.json", owns_dataset_file, force_option="overwrite=True")
    started = time.perf_counter()
    with atomic_folder(out, force=True, marker="dataset.json", owned=owns_dataset_file) as partial:
        info = _render_into(
            partial,
            split,
            count,
            seed,
            workers,
            progress,
            max_seconds,
            sampling_rate,
            shard_utterances,
            grammar_version,
        )
    if progress:
        took = time.perf_counter() - started
        total_seconds = info["total_seconds"]
        print(
            f"{out}: {count} utterances, {total_seconds / 3600:.2f} h of audio "
            f"({total_seconds / count:.2f} s average), {info['skipped_longer_than_max']} longer than {max_seconds:g} s "
            f"skipped, {took:.1f} s ({1000 * took / count:.1f} ms per utterance)",
            file=sys.stderr,
        )
    return out


def _render_into(
    partial: Path,
    split: Split,
    count: int,
    seed: int,
    workers: int,
    progress: bool,
    max_seconds: float,
    sampling_rate: int,
    shard_utterances: int,
    grammar_version: int,
) -> dict:
    """Render the utterances into the (staging) folder `partial`; returns dataset.json's content."""
    shards: list[dict] = []
    records: list[dict] = []
    pending: list[np.ndarray] = []
    pending_samples = 0
    skipped = 0
    total_seconds = 0.0

    def flush() -> None:
        nonlocal pending, pending_samples
        name = f"shard-{len(shards):05d}.npy"
        audio = np.concatenate(pending) if pending else np.zeros(0, np.int16)
        np.save(partial / name, audio, allow_pickle=False)
        shards.append({"file": name, "utterances": len(pending), "samples": int(audio.size)})
        pending, pending_samples = [], 0

    batch = max(16, min(256, count))
    with _RenderProgress(count, f"{split} ({count})", shown=progress) as bar:
        with (
            open(partial / "metadata.jsonl", "w", encoding="utf-8") as metadata,
            closing(_rendered(plan(split, seed, grammar_version), sampling_rate, workers, batch)) as rendered,
        ):
            for utterance, audio in rendered:
                seconds = audio.size / sampling_rate
                if seconds > max_seconds:
                    skipped += 1
                    continue
                record = {
                    **asdict(utterance),
                    "shard": len(shards),
                    "offset": pending_samples,
                    "length": int(audio.size),
                    "seconds": round(seconds, 4),
                }
                metadata.write(json.dumps(record, ensure_ascii=False) + "\n")
                records.append(record)
                pending.append(audio)
                pending_samples += audio.size
                total_seconds += seconds
                if len(pending) == shard_utterances:
                    flush()
                bar.update(len(records), total_seconds)
                if len(records) == count:
                    break
        if pending:
            flush()

    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": split,
        "count": count,
        "seed": seed,
        "grammar_version": grammar_version,
        "sampling_rate": sampling_rate,
        "dtype": "int16",
        "max_seconds": max_seconds,
        "skipped_longer_than_max": skipped,
        "total_seconds": round(total_seconds, 3),
        "speed_wpm_range": list(SPEED_RANGE_WPM),
        "pitch_range": list(PITCH_RANGE),
        "voices": list(speech.voices(split)),
        "shards": shards,
        "versions": _versions(),
    }
    (partial / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _versions() -> dict[str, str]:
    import soxr

    from edgelalm import __version__

    return {
        "espeak-ng": speech.espeak_version(),
        "edgelalm": __version__,
        "numpy": np.__version__,
        "soxr": soxr.__version__,
    }


# What a dataset folder (this module's or encoded.py's) holds: replacing one deletes nothing else.
_DATASET_FILE = re.compile(r"dataset\.json|metadata\.jsonl|(?:shard|frames|audio)-\d{5}\.npy")


def owns_dataset_file(name: str) -> bool:
    return _DATASET_FILE.fullmatch(name) is not None


def read_folder(directory: Path, format_name: str, format_version: int) -> tuple[dict, list[dict]]:
    """A dataset folder's dataset.json (checked to be `format_name`, at most `format_version`)
    and its metadata.jsonl records."""
    info_path = directory / "dataset.json"
    if not info_path.is_file():
        raise EdgelalmError(f"{directory} is not a dataset (no dataset.json)")
    info = read_json_object(info_path)
    version = info.get("format_version", 0)
    if info.get("format") != format_name or not isinstance(version, int) or version > format_version:
        raise EdgelalmError(
            f"{directory}: not a dataset this edgelalm reads ({info.get('format')!r} v{version!r}; "
            f"expected {format_name!r} v{format_version} or older)"
        )
    shards, rate = info.get("shards"), info.get("sampling_rate")
    if not isinstance(shards, list) or not shards or not all(isinstance(shard, dict) for shard in shards):
        raise EdgelalmError(f"{info_path}: shards must be a list of objects")
    if not is_whole_number(rate) or not SAMPLING_RATES[0] <= rate <= SAMPLING_RATES[1]:
        raise EdgelalmError(f"{info_path}: sampling_rate must be a whole number of Hz, got {rate!r}")
    metadata = directory / "metadata.jsonl"
    records = []
    try:
        with open(metadata, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    records.append(_record(line, f"{metadata}, line {number}", len(shards)))
    except (OSError, UnicodeDecodeError) as error:
        raise EdgelalmError(f"cannot read {metadata}: {getattr(error, 'strerror', None) or error}") from None
    if not records:
        raise EdgelalmError(f"{metadata} lists no clips")
    return info, records


def _record(line: str, where: str, shard_count: int) -> dict:
    """One metadata line, with the fields every dataset reads checked (a record that lies trained
    silently on nothing, or failed deep inside torch)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise EdgelalmError(f"{where} is not JSON: {error}") from None
    if not isinstance(record, dict):
        raise EdgelalmError(f"{where} must be a JSON object")
    if not isinstance(record.get("text"), str):
        raise EdgelalmError(f"{where}: text must be a string, got {record.get('text')!r}")
    seconds = record.get("seconds")
    if not is_finite_number(seconds) or seconds <= 0:
        raise EdgelalmError(f"{where}: seconds must be a finite number above 0, got {seconds!r}")
    for key, low, high in (("shard", 0, shard_count - 1), ("offset", 0, None)):
        value = record.get(key)
        if not is_whole_number(value) or value < low or (high is not None and value > high):
            raise EdgelalmError(
                f"{where}: {key} must be a whole number from {low}"
                + (f" to {high}" if high is not None else "")
                + f", got {value!r}"
            )
    return record


def check_spans(directory: Path, records: list[dict], shards: list[np.ndarray], length_key: str) -> None:
    """Each record's [offset, offset + length) lies inside its shard, and is not empty."""
    for number, record in enumerate(records, start=1):
        length = record.get(length_key)
        if not is_whole_number(length) or length < 1:
            raise EdgelalmError(
                f"{directory}: clip {number}'s {length_key} must be a whole number above 0, got {length!r}"
            )
        rows = shards[record["shard"]].shape[0]
        if record["offset"] + length > rows:
            raise EdgelalmError(
                f"{directory}: clip {number} ends at row {record['offset'] + length} of shard {record['shard']}, "
                f"which holds {rows}"
            )


def map_shard(path: Path, dimensions: int, kinds: str) -> np.ndarray:
    """A shard memory-mapped, checked to be a plain array of `dimensions` with a dtype kind in `kinds`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise EdgelalmError(f"{path} is not a plain numpy array file: {error or 'it is empty'}") from None
    if not isinstance(array, np.ndarray) or array.ndim != dimensions or array.dtype.kind not in kinds:
        raise EdgelalmError(
            f"{path}: expected a {dimensions}-D array of kind {kinds!r}, got {getattr(array, 'dtype', '?')} "
            f"{getattr(array, 'shape', '?')}"
        )
    return array


class SpeechDataset:
    """A folder written by `build_dataset`: `dataset[i]` -> (float32 samples, text).

    Shards are memory-mapped on first use in each process (a pickled SpeechDataset, as DataLoader
    workers get it, carries no mapping). `seconds` (numpy) gives every clip's length for bucketing.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.info, self.records = read_folder(self.directory, FORMAT, FORMAT_VERSION)
        self.sampling_rate: int = int(self.info["sampling_rate"])
        self.texts: list[str] = [record["text"] for record in self.records]
        # Mapped (and checked) now; a pickled copy, as a DataLoader worker gets, maps them again.
        self._shards: list[np.ndarray] | None = [self._shard_array(shard) for shard in self.info["shards"]]
        check_spans(self.directory, self.records, self._shards, "length")
        # From the samples themselves: a record's `seconds` is what build_dataset wrote, or a lie.
        self.seconds = np.array([record["length"] for record in self.records], dtype=np.float64) / self.sampling_rate

    def _shard_array(self, shard: dict) -> np.ndarray:
        name = shard.get("file")
        if not isinstance(name, str) or Path(name).name != name:
            raise EdgelalmError(
                f"{self.directory}/dataset.json: a shard's file must be a name in the folder, got {name!r}"
            )
        array = map_shard(self.directory / name, 1, "i")
        if array.dtype != np.int16:  # what build_dataset writes, and what __getitem__ scales
            raise EdgelalmError(f"{self.directory / name}: expected int16 samples, got {array.dtype}")
        return array

    def _mapped(self) -> list[np.ndarray]:
        if self._shards is None:
            self._shards = [self._shard_array(shard) for shard in self.info["shards"]]
        return self._shards

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = None
        return state

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} utterances")
        record = self.records[index]
        start = record["offset"]
        audio = self._mapped()[record["shard"]][start : start + record["length"]]
        return (audio.astype(np.float32) / np.float32(_INT16_SCALE)), record["text"]

    def __repr__(self) -> str:
        return f"SpeechDataset({str(self.directory)!r}: {self.info['split']}, {len(self)} utterances)"
