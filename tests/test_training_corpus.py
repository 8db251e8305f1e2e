"""The default model's training mixture (edgelalm.training.corpus, synthesizers, encoded): texts
the decoder cannot predict, several synthesizers, and the frozen tower's output stored instead of
audio, checked against transformers' own tower on the stored audio."""

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from hf_reference import TransformersAudioTower
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.errors import EdgelalmError
from edgelalm.training import corpus, synthesizers, texts
from edgelalm.training.encoded import EncodedDataset, build_encoded, build_encoded_recordings, plan
from edgelalm.training.train import encoded_rows

COUNT = 3000


def _stream(split, seed=0, count=COUNT):
    stream = corpus.iter_texts(split, seed)
    return [next(stream) for _ in range(count)]


@pytest.fixture(scope="module")
def train_texts():
    return _stream("train")


@pytest.fixture(scope="module")
def test_texts():
    return _stream("test")


def test_the_stream_is_deterministic_and_seeded():
    assert _stream("train", 0, 50) == _stream("train", 0, 50)
    assert _stream("train", 0, 50) != _stream("train", 1, 50)


def test_the_mixture_follows_its_shares(train_texts):
    counts = Counter(text.kind for text in train_texts)
    for kind, share in corpus.MIX.items():
        assert abs(counts[kind] / COUNT - share) < 0.04, (kind, counts)


def test_silence_has_an_empty_answer_and_speech_a_normalised_one(train_texts):
    for text in train_texts:
        if text.kind == "silence":
            assert text.spoken == text.transcript == ""
        else:
            assert text.transcript and texts.normalize_transcript(text.transcript) == text.transcript
            # what the synthesizer reads is the transcript with sentence pauses only
            assert re.sub(r"\.", "", text.spoken) == text.transcript


def test_free_word_sequences_use_the_broad_vocabulary(train_texts):
    allowed = set(corpus.common_words()) | {w for name in corpus._names("train") for w in name.split()}
    numbers = {w for n in range(10000) for w in texts.number_words(n).split()}
    words = [w for t in train_texts if t.kind == "words" for w in t.transcript.split()]
    assert set(words) <= allowed | numbers
    # far beyond the grammar: hundreds of words it never holds
    assert len(set(words) - set(texts.vocabulary())) > 1000
    assert 2 <= min(len(t.transcript.split()) for t in train_texts if t.kind == "words")


def test_long_texts_join_the_streams_speech_in_order():
    import itertools

    speech = [t for t in itertools.islice(corpus.iter_texts("test", 5), 400) if t.kind != "silence"]
    long_texts = list(itertools.islice(corpus.iter_long_texts("test", 5), 5))
    assert long_texts == list(itertools.islice(corpus.iter_long_texts("test", 5), 5))  # seeded
    joined = " ".join(t.transcript for t in long_texts)
    parts = next(n for n in range(len(speech)) if len(" ".join(t.transcript for t in speech[:n])) >= len(joined))
    assert joined == " ".join(t.transcript for t in speech[:parts])  # the speech texts, in order, none lost
    for text in long_texts:
        assert text.kind == "long" and text.spoken.endswith(".")
        words = len(text.transcript.split())
        assert corpus.WORDS_PER_LONG_TEXT[0] <= words <= corpus.WORDS_PER_LONG_TEXT[1] + 40
        # every part read as its own sentence: as many sentence ends as parts
        assert text.spoken.count(".") >= 2


def test_no_test_text_is_a_train_text_and_held_out_names_stay_in_test(train_texts, test_texts):
    spoken = {t.transcript for t in train_texts if t.transcript}
    assert not spoken & {t.transcript for t in test_texts if t.transcript}
    train_words = {w.removesuffix("'s") for t in train_texts for w in t.transcript.split()}
    assert not train_words & texts.HELD_OUT_WORDS
    test_words = {w.removesuffix("'s") for t in test_texts for w in t.transcript.split()}
    assert test_words & texts.HELD_OUT_WORDS


def test_the_never_heard_synthesizer_is_in_no_training_voice():
    for split in texts.SPLITS:
        engines = {synthesizers.engine_of(voice)[0] for voice in synthesizers.training_voices(split)}
        assert engines == {"espeak-ng", "festival"}
    assert {synthesizers.engine_of(v)[0] for v in synthesizers.UNHEARD_VOICES} == {"flite"}


@pytest.mark.parametrize("voice", ["espeak-ng:en-us", "festival:kal_diphone", "flite:awb"])
def test_every_engine_renders_speech_whose_length_follows_the_tempo(voice):
    engine = synthesizers.engine_of(voice)[0]
    if shutil.which(engine) is None:
        pytest.fail(f"{engine} is not installed (.ci/run installs it)")
    text = "turn the kitchen lights off and call my brother"
    slow, fast = synthesizers.render_all(
        [synthesizers.Request(text, voice, tempo=0.8), synthesizers.Request(text, voice, tempo=1.25)]
    )
    for clip in (slow, fast):
        assert clip.dtype == np.float32 and clip.ndim == 1 and 0.05 < np.abs(clip).max() <= 1.0
    assert 1.3 < len(slow) / len(fast) < 1.9  # 1.5625 asked


@pytest.mark.parametrize(
    "voice, text", [("festival:kal_diphone", 'a "quoted" (paren) \\ text'), ("flite:rms", "-voice slt")]
)
def test_text_is_data_not_a_command(voice, text):
    (clip,) = synthesizers.render_all([synthesizers.Request(text, voice)])
    assert len(clip) > 1600


def test_bad_requests_are_refused_with_one_error():
    for request in (
        synthesizers.Request("hi", "say:hello"),
        synthesizers.Request("hi", "festival:../../etc"),
        synthesizers.Request("", "flite:awb"),
        synthesizers.Request("hi", "flite:awb", tempo=3.0),
    ):
        with pytest.raises(EdgelalmError):
            synthesizers.render_all([request])


def test_the_plan_shares_the_engines_and_keeps_the_seed():
    clips = [clip for clip, _ in zip(plan("train", 0), range(400), strict=False)]
    engines = Counter(synthesizers.engine_of(c.voice)[0] for c in clips)
    assert 0.45 < engines["espeak-ng"] / 400 < 0.65
    assert clips[:20] == [c for c, _ in zip(plan("train", 0), range(20), strict=False)]


def test_a_sentence_file_is_said_whole_each_sentence_once_a_pass_in_a_seeded_order(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("It was the best of times.\n\nCall me at 7pm, said Anna!\nThe third one\n", encoding="utf-8")
    expected = {"it was the best of times", "call me at seven p m said anna", "the third one"}

    def first(seed, count):
        stream = corpus.iter_sentence_texts(path, seed)
        return [next(stream) for _ in range(count)]

    six = first(0, 6)
    assert {text.transcript for text in six[:3]} == {text.transcript for text in six[3:]} == expected
    assert all(text.kind == "prose" and text.spoken == text.transcript for text in six)
    assert first(0, 6) == six and {tuple(first(seed, 3)) for seed in range(6)} != {tuple(six[:3])}
    # the plan says them, with the training voices and its own tempo and pitch
    clips = [clip for clip, _ in zip(plan("train", 0, sentences=path), range(6), strict=False)]
    assert [(clip.kind, clip.text) for clip in clips] == [(text.kind, text.transcript) for text in six]
    assert {clip.voice for clip in clips} <= set(synthesizers.training_voices("train"))
    (tmp_path / "empty.txt").write_text("\n ... \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no sentences"):
        next(corpus.iter_sentence_texts(tmp_path / "empty.txt", 0))


@pytest.fixture(scope="module")
def encoded(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded") / "test"
    build_encoded(out, "test", 12, 0, tiny_checkpoint, keep_audio=True, workers=1, progress=False, max_seconds=10)
    return EncodedDataset(out)


def test_stored_frames_are_transformers_tower_on_the_stored_audio(encoded, tiny_checkpoint):
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    tower = TransformersAudioTower(model, Qwen2AudioProcessor.from_pretrained(tiny_checkpoint))
    assert len(encoded) == 12
    for index in range(len(encoded)):
        frames, text = encoded[index]
        assert frames.dtype == np.float16 and text == encoded.records[index]["text"]
        with torch.no_grad():
            reference, _, _ = tower(encoded.audio(index))
        assert frames.shape == reference.shape
        # encoded before the audio's int16 rounding, stored as float16: measured up to 2.5e-3 of the scale
        np.testing.assert_allclose(frames.astype(np.float32), reference, atol=5e-3 * np.abs(reference).max())


def test_folders_of_more_seeds_read_as_one_and_other_splits_are_refused(encoded, tiny_checkpoint, tmp_path):
    options = {"workers": 1, "progress": False, "max_seconds": 10}
    more = build_encoded(tmp_path / "more", "test", 3, 1, tiny_checkpoint, keep_audio=True, **options)
    other = EncodedDataset(more)
    joined = EncodedDataset(encoded.directory, more)
    assert len(joined) == len(encoded) + 3
    for index, (source, at) in enumerate([(encoded, i) for i in range(len(encoded))] + [(other, i) for i in range(3)]):
        frames, text = joined[index]
        np.testing.assert_array_equal(frames, source[at][0])
        np.testing.assert_array_equal(joined.audio(index), source.audio(at))
        assert text == source[at][1]
    assert joined.seconds.tolist() == encoded.seconds.tolist() + other.seconds.tolist()
    # a build's first clips are a smaller build of the same seed, clip for clip (train_base.py --train-clips)
    three = EncodedDataset(build_encoded(tmp_path / "three", "test", 3, 0, tiny_checkpoint, keep_audio=True, **options))
    first = EncodedDataset(encoded.directory, more, first_clips=3)
    assert len(first) == 6 and first.texts == three.texts + other.texts
    for index in range(3):
        np.testing.assert_array_equal(first[index][0], three[index][0])
    with pytest.raises(EdgelalmError, match="first_clips must be 1-12"):
        EncodedDataset(encoded.directory, first_clips=13)
    train = build_encoded(tmp_path / "train", "train", 2, 0, tiny_checkpoint, **options)
    with pytest.raises(EdgelalmError, match="cannot be joined"):
        EncodedDataset(encoded.directory, train)
    with pytest.raises(EdgelalmError, match="given twice"):  # each clip would train twice, unwarned
        EncodedDataset(encoded.directory, more, tmp_path / ".." / tmp_path.name / more.name)
    with pytest.raises(EdgelalmError, match="keeps no audio"):
        EncodedDataset(train).audio(0)


def test_recordings_are_the_towers_frames_of_their_audio_and_join_the_synthetic_clips(
    encoded, tiny_checkpoint, tmp_path
):
    """build_encoded_recordings: each recorded clip (any rate, read as the runtime reads audio) as
    transformers' tower encodes it, its transcript in the normal form; clips past max_seconds and
    transcripts with nothing to say left out; the folder joins build_encoded's of its split."""
    import soundfile

    rng = np.random.default_rng(5)
    clips = {
        "a.wav": (rng.standard_normal(16000 * 2) * 0.1, 16000, "SET THE KIDS ROOM TO 25 DEGREES!"),
        "b.wav": (rng.standard_normal(8000 * 1) * 0.1, 8000, "Hello, world."),
        "long.wav": (rng.standard_normal(16000 * 12) * 0.1, 16000, "too long for the bound below"),
        "cue.wav": (rng.standard_normal(16000) * 0.1, 16000, "..."),
        "c.flac": (rng.standard_normal(24000 * 3) * 0.1, 24000, "what's that?"),
    }
    rows = ["file\ttranscript\tspeaker"]
    for name, (samples, rate, transcript) in clips.items():
        soundfile.write(tmp_path / name, samples.astype(np.float32), rate)
        rows.append(f"{name}\t{transcript}\tjoe")
    (tmp_path / "transcripts.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = build_encoded_recordings(
        tmp_path / "recorded", tmp_path / "transcripts.tsv", tiny_checkpoint, split="test", keep_audio=True,
        max_seconds=10, progress=False,
    )  # fmt: skip
    recorded = EncodedDataset(out)
    assert recorded.texts == ["set the kids room to twenty five degrees", "hello world", "what's that"]
    assert [r["file"] for r in recorded.records] == ["a.wav", "b.wav", "c.flac"]
    assert {r["kind"] for r in recorded.records} == {"recording"} and recorded.records[0]["voice"] == "recording:joe"
    assert recorded.info["count"] == 3 and recorded.seconds.tolist() == [2.0, 1.0, 3.0]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    tower = TransformersAudioTower(model, Qwen2AudioProcessor.from_pretrained(tiny_checkpoint))
    for index in range(len(recorded)):
        with torch.no_grad():
            reference, _, _ = tower(recorded.audio(index))
        frames = recorded[index][0].astype(np.float32)
        assert frames.shape == reference.shape
        np.testing.assert_allclose(frames, reference, atol=5e-3 * np.abs(reference).max())
    joined = EncodedDataset(encoded.directory, out)
    assert len(joined) == len(encoded) + 3 and joined.texts[-3:] == recorded.texts
    trained = build_encoded_recordings(
        tmp_path / "train", tmp_path / "transcripts.tsv", tiny_checkpoint, progress=False
    )
    with pytest.raises(EdgelalmError, match="cannot be joined"):
        EncodedDataset(encoded.directory, trained)
    (tmp_path / "bad.tsv").write_text("path\ttext\nx.wav\thello\n", encoding="utf-8")
    with pytest.raises(EdgelalmError, match="'file' and 'transcript'"):
        build_encoded_recordings(tmp_path / "bad", tmp_path / "bad.tsv", tiny_checkpoint, progress=False)
    assert not (tmp_path / "bad").exists()


def test_recordings_variations_are_seeded_speed_changed_copies_the_tower_encodes(tiny_checkpoint, tmp_path):
    """build_encoded_recordings(augment_seed=N): each recording once more, never left clean and
    always played faster or slower (speed perturbation) before the rest, with the plain folder's
    texts; its frames are transformers' tower's for recording_variation's audio, which the folder
    keeps, seeded by the clip's row in the table (a row with nothing to say comes first, so that the
    row is not the clip's place in the folder) and the seed; another seed gives another folder."""
    import soundfile

    from edgelalm.runtime.audio import read_audio
    from edgelalm.training.encoded import recording_variation

    rng = np.random.default_rng(9)
    rows = ["file\ttranscript"]
    for name, seconds, transcript in (
        ("cue.wav", 1.0, "..."),
        ("a.wav", 2.0, "Call Anna at 6."),
        ("b.wav", 1.5, "stop"),
    ):
        soundfile.write(tmp_path / name, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
        rows.append(f"{name}\t{transcript}")
    (tmp_path / "transcripts.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    def build(name: str, seed: int | None) -> EncodedDataset:
        return EncodedDataset(
            build_encoded_recordings(
                tmp_path / name, tmp_path / "transcripts.tsv", tiny_checkpoint, split="test", keep_audio=True,
                progress=False, augment_seed=seed,
            )
        )  # fmt: skip

    plain, varied, other = build("plain", None), build("v3", 3), build("v4", 4)
    assert varied.texts == plain.texts == ["call anna at six", "stop"]
    assert varied.info["augment_seed"] == 3 and plain.info["augment_seed"] is None
    assert [r["augment"] for r in plain.records] == [[], []]
    for record in varied.records + other.records:
        assert record["augment"][:2] == ["speed", "augment"] and "clean" not in record["augment"]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    tower = TransformersAudioTower(model, Qwen2AudioProcessor.from_pretrained(tiny_checkpoint))
    for index, (row, name) in enumerate([(1, "a.wav"), (2, "b.wav")]):
        recorded = read_audio(tmp_path / name, 16000)
        samples, applied = recording_variation(recorded, 3, row)
        assert applied == varied.records[index]["augment"]
        np.testing.assert_allclose(varied.audio(index), samples, atol=1 / 32767)  # kept as int16
        np.testing.assert_array_equal(recording_variation(recorded, 3, row)[0], samples)
        assert not np.array_equal(recording_variation(recorded, 3, row + 1)[0], samples)
        assert not np.array_equal(varied.audio(index), other.audio(index))
        with torch.no_grad():
            reference, _, _ = tower(samples)
        frames = varied[index][0].astype(np.float32)
        assert frames.shape == reference.shape
        np.testing.assert_allclose(frames, reference, atol=5e-3 * np.abs(reference).max())
    with pytest.raises(EdgelalmError, match="augment_seed must be 0 or more"):
        build("negative", -1)
    assert not (tmp_path / "negative").exists()


def test_joined_rows_join_frames_and_answers(encoded):
    rng = np.random.default_rng(0)
    frames, answers = encoded_rows(encoded, [0, 1, 2], rng, joined=True, max_frames=10_000)
    for row, index in enumerate([0, 1, 2]):
        assert len(frames[row]) > 1 and frames[row][0] is not None
        np.testing.assert_array_equal(frames[row][0], encoded[index][0])
        assert answers[row].startswith(encoded[index][1])
        assert "  " not in answers[row] and answers[row] == answers[row].strip()
    single, texts_ = encoded_rows(encoded, [0, 1], rng, joined=False, max_frames=10_000)
    assert [[len(part) for part in f] for f in single] == [[len(encoded[0][0])], [len(encoded[1][0])]]
    assert texts_ == [encoded[0][1], encoded[1][1]]
    short, _ = encoded_rows(encoded, [0], rng, joined=True, max_frames=len(encoded[0][0]))
    assert len(short[0]) == 1  # nothing fits beside it


def test_encoded_training_loss_trains_projector_and_decoder_not_the_tower(encoded, tiny_checkpoint):
    from torch import nn

    from edgelalm.training.model import PromptIds
    from edgelalm.training.train import CharacterCtc, frames_batch_loss

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    model.model.audio_tower.requires_grad_(False)
    processor = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint)
    ctc = CharacterCtc(model.config.text_config.hidden_size, texts.ALPHABET)
    rows = [encoded[i] for i in range(4)]
    loss, parts = frames_batch_loss(
        model, nn.Identity(), PromptIds.from_processor(processor), processor.tokenizer,
        [[f] for f, _ in rows], [t for _, t in rows], ctc, 0.5,
    )  # fmt: skip
    assert set(parts) == {"answer_loss", "ctc_loss"}
    assert loss.item() == pytest.approx(parts["answer_loss"] + 0.5 * parts["ctc_loss"], rel=1e-5)
    loss.backward()
    assert model.model.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    assert ctc.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.audio_tower.parameters())


def test_finetune_reads_encoded_frames_of_its_own_tower_only(encoded, tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from edgelalm.compression import CompressorSpec
    from edgelalm.training.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(
        tiny_checkpoint, encoded.directory, tmp_path / "avg2", CompressorSpec("avg", 2), steps=6, batch_size=4
    )
    adapter = finetune(options, progress=False)
    records = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and np.isfinite(records[-1]["answer_loss"])
    assert json.loads((adapter / "edgelalm_finetune.json").read_text())["clips"] == len(encoded)
    # Another tower (one weight moved): its frames would not be these; refused before training.
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    weights = load_file(other / "model.safetensors")
    name = next(key for key in sorted(weights) if "audio_tower" in key and key.endswith("weight"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    refused = FinetuneOptions(other, encoded.directory, tmp_path / "refused", CompressorSpec("avg", 2), steps=2)
    with pytest.raises(EdgelalmError, match="another audio tower"):
        finetune(refused, progress=False)
    assert not (tmp_path / "refused").exists()


def test_token_ctc_scores_the_decoders_own_embeddings_and_decodes_its_best_path(tiny_checkpoint):
    """TokenCtc's classes are the decoder's vocabulary (its input embeddings, shared, not copied)
    plus a blank; frames equal to a text's token embeddings decode back to that text, and the loss
    is torch's CTC over the tokenizer's ids."""
    import torch

    from edgelalm.training.train import TokenCtc

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint)
    embeddings = model.get_input_embeddings()
    with torch.no_grad():  # distinct unit rows, so that each token's own row scores highest
        rows = torch.randn(embeddings.weight.shape, generator=torch.Generator().manual_seed(0))
        embeddings.weight.copy_(rows / rows.norm(dim=-1, keepdim=True))
    ctc = TokenCtc(embeddings, processor.tokenizer)
    with torch.no_grad():  # a blank of its own (drawn from torch's global generator, it equals row 0 after a seed of 0)
        ctc.blank.copy_(torch.randn(ctc.blank.shape, generator=torch.Generator().manual_seed(1)))
    assert ctc.embeddings.weight is embeddings.weight
    text = texts.utterances("test", 1, 3)[0]
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ctc.log_scale.fill_(4.0)
        # each token held for two frames, then a frame of the blank's direction
        frames = torch.stack([f for i in ids for f in (embeddings.weight[i], 3 * embeddings.weight[i], ctc.blank)])
    assert ctc.greedy(frames) == processor.tokenizer.decode(ids).strip() == text
    loss = ctc.loss(frames[None], torch.tensor([len(frames)]), [text])
    classes = torch.cat([ctc.blank[None], embeddings.weight]).detach()
    cosine = (frames / frames.norm(dim=-1, keepdim=True)) @ (classes / classes.norm(dim=-1, keepdim=True)).T
    logits = cosine * float(torch.e**4)
    expected = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1)[:, None], torch.tensor([i + 1 for i in ids]),
        torch.tensor([len(frames)]), torch.tensor([len(ids)]),
    )  # fmt: skip
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert embeddings.weight.grad.abs().sum() > 0 and ctc.blank.grad is not None


def test_a_token_ctc_head_goes_on_in_the_next_stage(tiny_checkpoint, tmp_path):
    import torch

    from edgelalm.training.train import TokenCtc

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    tokenizer = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint).tokenizer
    trained = TokenCtc(model.get_input_embeddings(), tokenizer)
    with torch.no_grad():
        trained.log_scale.fill_(3.25)
    trained.save_head(tmp_path / "ctc_head.safetensors")
    fresh = TokenCtc(model.get_input_embeddings(), tokenizer)
    assert not torch.equal(fresh.blank, trained.blank)
    fresh.load_head(tmp_path / "ctc_head.safetensors")
    assert torch.equal(fresh.blank, trained.blank) and float(fresh.log_scale) == 3.25
    assert fresh.embeddings is trained.embeddings  # the model's own, never saved with the head


def test_a_head_trains_layers_of_its_own_alone_and_saves_them(encoded, tiny_checkpoint, tmp_path):
    """train_ctc_head.py's settings: the model frozen, the CTC loss alone, layers added to a
    checkpoint's head; the run's head file holds them, the model is untouched, and the layers
    moved from the identity they started as."""
    import dataclasses

    from safetensors.torch import load_file

    from edgelalm.constants import CTC_HEAD_FILE
    from edgelalm.export.ctc import load_ctc_head
    from edgelalm.training.train import RUN_CTC_HEAD_FILE, TokenCtc, TrainSettings, train

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint)
    model.requires_grad_(False)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    start = TokenCtc(model.get_input_embeddings(), processor.tokenizer)
    start.save_head(tmp_path / "start.safetensors")
    settings = dataclasses.replace(
        TrainSettings(), steps=3, batch_size=4, bucket_batches=2, warmup_steps=1, ctc_target="tokens",
        ctc_weight=1.0, ctc_layers=1, ctc_layers_attention_span=2, answer_loss=False, augment_probability=0.0,
        eval_every=3, eval_clips=4,
    )  # fmt: skip
    train(
        model, processor, encoded, encoded, tmp_path / "run", settings, parameters=[], progress=False,
        ctc_head=tmp_path / "start.safetensors",
    )  # fmt: skip
    head = load_file(str(tmp_path / "run" / RUN_CTC_HEAD_FILE))
    assert {name for name in head if name.startswith("layers.stack.0.")} and not any(".1." in n for n in head)
    assert head["layers.stack.0.attention_output.weight"].abs().max() > 0  # trained away from zero
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    (tmp_path / "run" / RUN_CTC_HEAD_FILE).rename(tmp_path / "run" / CTC_HEAD_FILE)  # as train_ctc_head.py does
    read = load_ctc_head(tmp_path / "run", model.get_input_embeddings().weight.detach())
    assert read.layers is not None and read.layers.attention_heads == 1  # width 64: one head of 64
    assert read.layers.attention_span == 2
    # New layers asked of a head that has some: refused (the file's would have trained in their place).
    with pytest.raises(EdgelalmError, match="has layers of its own already"):
        train(
            model, processor, encoded, encoded, tmp_path / "again", settings, parameters=[], progress=False,
            ctc_head=tmp_path / "run" / CTC_HEAD_FILE,
        )  # fmt: skip
    with pytest.raises(ValueError, match="ctc_layers asks for none"):
        train(
            model, processor, encoded, encoded, tmp_path / "none", dataclasses.replace(settings, ctc_layers=0),
            parameters=[], progress=False,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Stored below a tower layer: the layers above train (train_base.py --tune-tower-from)


@pytest.fixture(scope="module")
def encoded_below(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded-below") / "test"
    options = {"keep_audio": True, "workers": 1, "progress": False, "max_seconds": 10, "below_layer": 1}
    build_encoded(out, "test", 6, 0, tiny_checkpoint, **options)
    return EncodedDataset(out)


def test_stored_below_a_layer_then_the_layers_above_give_transformers_tower(encoded_below, tiny_checkpoint):
    from edgelalm.training.model import encode_above

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    tower = TransformersAudioTower(model, Qwen2AudioProcessor.from_pretrained(tiny_checkpoint))
    assert encoded_below.below_layer == 1 and encoded_below.info["frames_per_second"] == 50
    stored = [encoded_below[i][0] for i in range(len(encoded_below))]
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(s.astype(np.float32)) for s in stored], batch_first=True)
    with torch.no_grad():
        above = encode_above(model.model.audio_tower, padded, torch.tensor([len(s) for s in stored]), 1)
    for index in range(len(encoded_below)):
        with torch.no_grad():
            reference, _, _ = tower(encoded_below.audio(index))
        frames = above.frames[index, : above.frame_counts[index]].numpy()
        assert frames.shape == reference.shape
        np.testing.assert_allclose(frames, reference, atol=5e-3 * np.abs(reference).max())


def test_a_folder_stored_below_a_layer_outlives_tuning_above_it_only(encoded_below, tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    encoded_below.check_tower(tiny_checkpoint)
    for moved, kept in (
        ("audio_tower.layers.1.", True),
        ("audio_tower.layer_norm.", True),
        ("audio_tower.layers.0.", False),
    ):
        other = tmp_path / moved
        shutil.copytree(tiny_checkpoint, other)
        weights = load_file(other / "model.safetensors")
        name = next(key for key in sorted(weights) if moved in key and key.endswith("weight"))
        weights[name] = weights[name] + 1e-3
        save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
        if kept:
            encoded_below.check_tower(other)
        else:
            with pytest.raises(EdgelalmError, match="another audio tower"):
                encoded_below.check_tower(other)
    with pytest.raises(EdgelalmError, match="cannot be joined"):  # the same clips, stored at another layer
        build_encoded(tmp_path / "top", "test", 2, 0, tiny_checkpoint, workers=1, progress=False, max_seconds=10)
        EncodedDataset(encoded_below.directory, tmp_path / "top")


def test_tuning_the_tower_from_a_layer_trains_that_layer_up_and_nothing_below(encoded_below, tiny_checkpoint, tmp_path):
    from edgelalm.training.train import TrainSettings, train

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint)
    processor = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint)
    tower = model.model.audio_tower
    before = {name: p.detach().clone() for name, p in tower.named_parameters()}
    settings = TrainSettings(
        steps=3, batch_size=2, warmup_steps=1, learning_rate=1e-2, ctc_weight=0.0, eval_every=3, eval_clips=2,
        tune_tower_from=1, concat_probability=0.5, bucket_batches=1,
    )  # fmt: skip
    log = train(model, processor, encoded_below, encoded_below, tmp_path / "run", settings, progress=False)
    assert np.isfinite(log.records[-1]["test_loss"])
    moved = {name for name, p in tower.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(name.startswith(("layers.1.", "layer_norm.")) for name in moved)
    assert any(name.startswith("layers.1.") for name in moved) and any(n.startswith("layer_norm.") for n in moved)
    with pytest.raises(ValueError, match="stored below it"):  # layer 0 is not in the stored data
        train(model, processor, encoded_below, None, tmp_path / "no", TrainSettings(steps=1, tune_tower_from=0))


def test_finetune_reads_a_folder_stored_below_a_layer(encoded_below, tiny_checkpoint, tmp_path):
    """The realignment runs the (frozen) layers above the stored ones itself."""
    from edgelalm.compression import CompressorSpec
    from edgelalm.training.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(
        tiny_checkpoint, encoded_below.directory, tmp_path / "avg2", CompressorSpec("avg", 2), steps=3, batch_size=2
    )
    records = [
        json.loads(line) for line in (finetune(options, progress=False) / "train_log.jsonl").read_text().splitlines()
    ]
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["answer_loss"])


def test_a_folder_carried_further_up_is_what_the_tower_stores_there(encoded_below, encoded, tiny_checkpoint, tmp_path):
    """`encode_further` to the tower's output: the clips of a folder built that way (the same seed),
    within float16 rounding, checked against the tower that carried it; never downwards."""
    from edgelalm.training.encoded import encode_further

    carried = EncodedDataset(encode_further(encoded_below.directory, tmp_path / "out", tiny_checkpoint, progress=False))
    assert carried.below_layer is None and carried.info["frames_per_second"] == 25
    carried.check_tower(tiny_checkpoint)
    assert carried.texts == encoded.texts[: len(carried)]
    for index in range(len(carried)):
        reference = encoded[index][0].astype(np.float32)
        np.testing.assert_allclose(carried[index][0].astype(np.float32), reference, atol=5e-3 * np.abs(reference).max())
        np.testing.assert_array_equal(carried.audio(index), encoded_below.audio(index))
    with pytest.raises(EdgelalmError, match="cannot be carried"):
        encode_further(tmp_path / "out", tmp_path / "back", tiny_checkpoint, 1, progress=False)


def test_the_language_model_loss_reads_plain_sentences(encoded, tiny_checkpoint, tmp_path):
    """`lm_texts`: a next-token loss on sentences with no prompt and no audio, beside the answers;
    its labels are the sentence between two <|endoftext|>, as transformers' causal LM scores it."""
    from edgelalm.training.model import answer_loss, text_inputs
    from edgelalm.training.train import TrainSettings, train

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    processor = Qwen2AudioProcessor.from_pretrained(tiny_checkpoint)
    tokenizer = processor.tokenizer
    boundary = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("set a timer", "call mom now please")]
    with torch.no_grad():
        loss = answer_loss(model, *text_inputs(model, rows, boundary))
        reference = [  # each sentence alone, unpadded, through transformers' own forward
            torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([[boundary, *row, boundary]])).logits[0, :-1],
                torch.tensor([*row, boundary]),
                reduction="sum",
            )
            for row in rows
        ]
    assert loss.item() == pytest.approx(float(sum(reference)) / sum(len(row) + 1 for row in rows), rel=1e-4)
    settings = TrainSettings(steps=2, batch_size=2, warmup_steps=1, ctc_weight=0.0, bucket_batches=1, lm_weight=0.5)
    log = train(
        model, processor, encoded, None, tmp_path / "run", settings, progress=False, lm_texts=["hello there"] * 3
    )
    assert np.isfinite(log.records[-1]["lm_loss"]) and log.records[-1]["lm_loss"] > 0


def _mutated(encoded, tmp_path, change):
    """A copy of the encoded folder with `change(records, folder)` applied to its metadata."""
    folder = tmp_path / "mutated"
    shutil.copytree(encoded.directory, folder)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    change(records, folder)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def _set_first(key, value):
    def change(records, folder):
        records[0][key] = value

    return change


def _nan_frames(records, folder):
    frames = np.load(folder / "frames-00000.npy")
    frames[records[0]["offset"]] = np.nan
    np.save(folder / "frames-00000.npy", frames)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_first("frames", 0), "clip 1's frames must be a whole number above 0"),  # trained on no audio
        (_set_first("offset", -3), "offset must be a whole number from 0"),
        (_set_first("offset", 10**6), "clip 1 ends at row"),
        (_set_first("shard", 7), "shard must be a whole number from 0 to 0"),
        (_set_first("text", None), "text must be a string"),  # trained an empty answer
        (_set_first("seconds", float("nan")), "seconds must be a finite number above 0"),
        (_set_first("seconds", 0.2), "but says it lasts 0.2 s"),  # past the window, unchecked
        (lambda records, folder: records.clear(), "lists no clips"),  # numpy's zero-size error
        (lambda records, folder: (folder / "frames-00000.npy").unlink(), "frames-00000.npy is not a plain numpy"),
        (
            lambda records, folder: np.save(folder / "frames-00000.npy", np.zeros(8, np.float16)),
            "expected a 2-D array",
        ),
    ],
)
def test_an_encoded_folder_that_lies_is_one_line(encoded, tmp_path, change, message):
    """Each trained silently on nothing, or failed with a traceback (KeyError, IndexError, torch's
    matmul)."""
    from edgelalm.errors import EdgelalmError

    with pytest.raises(EdgelalmError, match=re.escape(message)):
        EncodedDataset(_mutated(encoded, tmp_path, change))


def test_non_finite_training_data_stops_training_in_one_line(encoded, tiny_checkpoint, tmp_path):
    """A NaN frame trained every LoRA weight to NaN and saved the adapter with exit 0."""
    from edgelalm.compression import CompressorSpec
    from edgelalm.errors import EdgelalmError
    from edgelalm.training.finetune import FinetuneOptions, finetune

    folder = _mutated(encoded, tmp_path, _nan_frames)
    options = FinetuneOptions(
        tiny_checkpoint, folder, tmp_path / "nan", CompressorSpec("avg", 2), steps=20, batch_size=12
    )
    with pytest.raises(EdgelalmError, match=r"training diverged at step \d+: the loss is nan"):
        finetune(options, progress=False)
    assert not (tmp_path / "nan").exists()
