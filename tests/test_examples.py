"""The example clips (examples/, made by recipes/default_model/make_examples.py): what the README
and the default model's tests run on must be speech the model was not trained on."""

from pathlib import Path

import pytest
import soundfile

from edgelalm.errors import EdgelalmError
from edgelalm.files import read_tsv
from edgelalm.training import synthesizers, texts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def rows() -> list[dict[str, str]]:
    return read_tsv(EXAMPLES / "transcripts.tsv")


def test_every_example_is_a_16_khz_clip_of_a_sentence_not_trained_on():
    for row in rows():
        info = soundfile.info(EXAMPLES / row["file"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), row["file"]
        assert texts.split_of(texts.normalize_transcript(row["transcript"])) != "train", row["file"]
        assert row["heard"] == synthesizers.heard_in_training(row["voice"]), row["file"]


def test_what_training_heard_follows_the_voice_splits():
    from edgelalm.training import speech

    assert synthesizers.heard_in_training("flite:awb") == "never-heard synthesizer"
    assert synthesizers.heard_in_training("festival:kal_diphone") == "training voice"
    held_out = sorted(set(speech.voices("test")) - set(speech.voices("train")))
    assert held_out and synthesizers.heard_in_training(f"espeak-ng:{held_out[0]}") == "held-out voice"
    assert synthesizers.heard_in_training(f"espeak-ng:{speech.voices('train')[0]}") == "training voice"
    with pytest.raises(EdgelalmError, match="none of the default model's voices"):
        synthesizers.heard_in_training("espeak-ng:no-such-voice")
