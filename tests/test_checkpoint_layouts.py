"""Checkpoint folders as they are found in the wild (issue 14): no chat template (the published
Qwen2-Audio-7B-Instruct main branch), the base model's prompt, a tokenizer whose unk_token is
<|endoftext|>, a Hugging Face cache snapshot. References: transformers' own processor output."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from transformers import Qwen2AudioProcessor

from edgelalm.errors import EdgelalmError
from edgelalm.export.checkpoint import model_name, open_checkpoint
from edgelalm.export.describe import special_tokens
from edgelalm.prompt import (
    BASE_DEFAULT_PROMPT,
    chat_template_pieces,
    checkpoint_has_template,
    detect_prompt_format,
    prompt_pieces,
)


def _copy(tiny_checkpoint: Path, target: Path, template: bool = True) -> Path:
    shutil.copytree(tiny_checkpoint, target)
    if not template:
        (target / "chat_template.jinja").unlink()
        for name in ("tokenizer_config.json", "processor_config.json"):
            config = json.loads((target / name).read_text())
            config.pop("chat_template", None)
            (target / name).write_text(json.dumps(config))
    return target


def _ids(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_template_less_instruct_checkpoint_gets_qwen2_audio_instructs_template(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path / "my-finetune", template=False)
    assert checkpoint_has_template(tiny_checkpoint) and not checkpoint_has_template(folder)
    checkpoint = open_checkpoint(folder)
    pieces = prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)
    assert (pieces.format, pieces.template_source) == ("instruct", "edgelalm")
    # transformers still falls back to its own Qwen2-Audio template here (for now): the same text.
    fallback = checkpoint.processor.chat_template
    assert fallback, "transformers dropped its fallback template: this comparison needs another reference"
    reference = chat_template_pieces(checkpoint.processor, "fallback", template=fallback)
    for piece in ("before_audio", "after_audio", "after_prompt"):
        assert getattr(pieces, piece) == getattr(reference, piece)
    # and what the processor renders for a real conversation is the pieces around the audio and prompt
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Hi?"}]}]
    rendered = checkpoint.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == pieces.before_audio + "<|AUDIO|>" + pieces.after_audio + "Hi?" + pieces.after_prompt


def test_the_base_model_is_detected_by_name_and_prompted_as_its_model_card_shows(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path / "Qwen2-Audio-7B", template=False)
    assert detect_prompt_format(folder, "Qwen2-Audio-7B") == "base"
    assert detect_prompt_format(folder, "Qwen2-Audio-7B-Instruct") == "instruct"
    assert detect_prompt_format(tiny_checkpoint, "Qwen2-Audio-7B") == "instruct"  # it has a template
    processor = Qwen2AudioProcessor.from_pretrained(folder)
    pieces = prompt_pieces(processor, folder, "Qwen2-Audio-7B", None)
    assert (pieces.format, pieces.template_source, pieces.default_prompt) == ("base", "none", BASE_DEFAULT_PROMPT)
    # transformers' processor on the model card's text: audio_bos, the audio tokens, audio_eos, the task
    clip = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    text = "<|audio_bos|><|AUDIO|><|audio_eos|>" + BASE_DEFAULT_PROMPT
    ids = processor(text=text, audio=[clip], sampling_rate=16000, return_tensors="np")["input_ids"][0].tolist()
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    audio_count = ids.count(audio_id)
    ours = _ids(processor, pieces.before_audio) + [audio_id] * audio_count
    ours += _ids(processor, pieces.after_audio) + _ids(processor, pieces.default_prompt + pieces.after_prompt)
    assert audio_count > 10 and ours == ids
    # forced either way
    assert prompt_pieces(processor, folder, "Qwen2-Audio-7B", "instruct").format == "instruct"
    assert prompt_pieces(processor, tiny_checkpoint, "anything", "base").format == "base"


def test_an_endoftext_unk_token_is_still_a_token(tiny_checkpoint, tmp_path):
    """transformers' Qwen2TokenizerFast defaults unk_token to <|endoftext|>: a tokenizer saved from
    a default-constructed one says so, and the old check (id == unk_token_id) refused it."""
    folder = _copy(tiny_checkpoint, tmp_path / "unk")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["unk_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    checkpoint = open_checkpoint(folder)
    tokenizer = checkpoint.processor.tokenizer
    assert tokenizer.unk_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")  # the case itself
    tokens = special_tokens(checkpoint)
    assert tokens.endoftext.id == tokenizer.get_vocab()["<|endoftext|>"]


def test_a_hugging_face_cache_snapshot_is_named_after_its_repository(tiny_checkpoint, tmp_path):
    repository = tmp_path / "hub" / "models--Qwen--Qwen2-Audio-7B-Instruct"
    snapshot = repository / "snapshots" / "0a095220c30b7b31434169c3086508ef3ea5bf0a"
    blobs = repository / "blobs"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for number, file in enumerate(sorted(tiny_checkpoint.iterdir())):
        blob = blobs / f"{number:040x}"
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    checkpoint = open_checkpoint(snapshot)
    assert checkpoint.name == model_name(snapshot) == "Qwen2-Audio-7B-Instruct"
    assert model_name(tiny_checkpoint) == tiny_checkpoint.name
    assert special_tokens(checkpoint).audio.text == "<|AUDIO|>"


def test_a_snapshot_with_a_link_to_nothing_is_one_line(tiny_checkpoint, tmp_path):
    """An interrupted download leaves links to blobs that never came: a tokenizer.json linked to
    nothing was read as absent, and the special tokens were numbered otherwise (the answers
    changed, the export succeeded); a chat template's link, as a checkpoint without one."""
    for name in ("tokenizer.json", "chat_template.jinja"):
        snapshot = tmp_path / name / "snapshots" / "0a095220c30b7b31434169c3086508ef3ea5bf0a"
        shutil.copytree(tiny_checkpoint, snapshot)
        (snapshot / name).unlink(missing_ok=True)
        (snapshot / name).symlink_to("../../blobs/never-downloaded")
        with pytest.raises(EdgelalmError, match=re.escape(f"{name} is a link to nothing (an interrupted download?)")):
            open_checkpoint(snapshot)


def test_special_tokens_with_no_ids_recorded_are_refused(tiny_checkpoint, tmp_path):
    """vocab.json and merges.txt alone, and a tokenizer config without added_tokens_decoder (as
    transformers 5 saves it): transformers numbers the special tokens in the order it adds them,
    <|im_start|> and <|im_end|> swapped against the model's. With added_tokens.json it is read."""
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    tokenizer = open_checkpoint(folder).processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    (folder / "tokenizer.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(EdgelalmError, match=re.escape("have no ids recorded: no tokenizer.json, added_tokens.json")):
        open_checkpoint(folder)
    vocabulary = json.loads((folder / "vocab.json").read_text())
    (folder / "added_tokens.json").write_text(json.dumps({t: i for t, i in ids.items() if t not in vocabulary}))
    tokenizer = open_checkpoint(folder).processor.tokenizer
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in ids} == ids


def test_a_link_to_a_checkpoint_is_named_as_the_checkpoint(tiny_checkpoint, tmp_path):
    """Detection read the link's name (`mybase`: an Instruct model) and the bundle's default name
    the folder's (Qwen2-Audio-7B: a base model), both exports into the same folder."""
    link = tmp_path / "mybase"
    link.symlink_to(tiny_checkpoint)
    assert open_checkpoint(link).name == model_name(link) == tiny_checkpoint.name


@pytest.mark.parametrize(
    "folder_name, option, expected",
    [
        ("my-finetune", [], ("instruct", "edgelalm", "prompt format instruct (detected")),
        ("Qwen2-Audio-7B", [], ("base", "none", "prompt format base (detected")),
        ("Qwen2-Audio-7B", ["--prompt-format", "instruct"], ("instruct", "edgelalm", "(as asked)")),
    ],
)
def test_export_of_a_template_less_checkpoint_says_which_prompt_it_wrote(
    tiny_checkpoint, tmp_path, monkeypatch, capsys, folder_name, option, expected
):
    from test_export_cli import in_process

    from edgelalm.manifest import read_manifest

    folder = _copy(tiny_checkpoint, tmp_path / folder_name, template=False)
    out = tmp_path / "bundle"
    code, _, stderr = in_process(
        monkeypatch, capsys, "export", "--model", folder, "--compressor", "none", "--out", out, *option
    )
    assert code == 0, stderr
    prompt = read_manifest(out).prompt
    assert (prompt.format, prompt.template_source) == expected[:2]
    assert expected[2] in stderr
    if prompt.format == "base":
        assert prompt.before_audio == "<|audio_bos|>" and prompt.chat_template == ""


def test_an_older_save_with_added_tokens_json_exports(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Tokenizers saved before tokenizer.json: vocab.json + merges.txt, the special tokens in
    added_tokens.json and special_tokens_map.json. Same ids as the fast tokenizer, and llama.cpp
    tokenizes the prompt as transformers does (export's step 7 checks that)."""
    from test_export_cli import in_process
    from transformers import AutoTokenizer

    folder = _copy(tiny_checkpoint, tmp_path / "older-save")
    reference = AutoTokenizer.from_pretrained(tiny_checkpoint)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    (folder / "tokenizer.json").unlink()
    (folder / "added_tokens.json").write_text(json.dumps({t: reference.convert_tokens_to_ids(t) for t in specials}))
    special_map = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": specials[1:]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("extra_special_tokens", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    checkpoint = open_checkpoint(folder)
    text = "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nTranscribe the audio.<|im_end|>"
    assert checkpoint.processor.tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert special_tokens(checkpoint).audio.id == reference.convert_tokens_to_ids("<|AUDIO|>")
    out = tmp_path / "bundle"
    code, _, stderr = in_process(monkeypatch, capsys, "export", "--model", folder, "--compressor", "none", "--out", out)
    assert code == 0, stderr
    assert "prompt token ids equal the checkpoint tokenizer's" in stderr


def test_finetune_prompts_a_template_less_checkpoint_as_export_does(tiny_checkpoint, tmp_path):
    """Training must not depend on transformers' fallback template either: the adapter is trained on
    the prompt the bundle will feed."""
    from edgelalm.prompt import instruct_template
    from edgelalm.training.finetune import load_for_training
    from edgelalm.training.model import PromptIds

    folder = _copy(tiny_checkpoint, tmp_path / "my-finetune", template=False)
    _, processor = load_for_training(folder, "cpu")
    assert processor.chat_template == instruct_template()
    checkpoint = open_checkpoint(folder)
    pieces = prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)
    prompt = PromptIds.from_processor(processor)
    assert prompt.before_audio == _ids(processor, pieces.before_audio)
    assert prompt.after_audio == _ids(processor, pieces.after_audio + pieces.default_prompt + pieces.after_prompt)


def test_finetune_prompts_the_base_model_in_the_base_format_as_export_does(tiny_checkpoint, tmp_path):
    """A template-less folder named Qwen2-Audio-7B: export prompts it in the base format (the audio,
    then the task text), and finetune trained it on the instruct chat template, a prompt its
    bundle never feeds. Reference: transformers' processor on the model card's text."""
    from edgelalm.training.finetune import open_for_training
    from edgelalm.training.model import PromptIds

    folder = _copy(tiny_checkpoint, tmp_path / "Qwen2-Audio-7B", template=False)
    _, processor, pieces = open_for_training(folder, "cpu")
    prompt = PromptIds.from_pieces(processor.tokenizer, pieces)
    clip = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    text = "<|audio_bos|><|AUDIO|><|audio_eos|>" + BASE_DEFAULT_PROMPT
    ids = processor(text=text, audio=[clip], sampling_rate=16000, return_tensors="np")["input_ids"][0].tolist()
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    first, last = ids.index(audio_id), len(ids) - ids[::-1].index(audio_id)
    assert (prompt.before_audio, prompt.after_audio) == (ids[:first], ids[last:])
    assert prompt.end_of_answer == processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # asked for, as export's --prompt-format
    _, _, instruct = open_for_training(folder, "cpu", "instruct")
    assert PromptIds.from_pieces(processor.tokenizer, instruct) == PromptIds.from_processor(processor)
    # and as the WER checks prompt it (transcribe_torch's prompt: the instruct one, before)
    assert PromptIds.for_checkpoint(processor, folder) == prompt
    assert PromptIds.for_checkpoint(processor, folder, "instruct") == PromptIds.from_processor(processor)


@pytest.mark.parametrize(("trained_with", "bundle_format"), [("instruct", "base"), ("base", "instruct")])
def test_an_adapter_trained_on_another_prompt_format_is_refused(tiny_checkpoint, tmp_path, trained_with, bundle_format):
    from edgelalm.constants import FINETUNE_RECORD_FILE
    from edgelalm.export.bundle import open_checkpoint_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / FINETUNE_RECORD_FILE).write_text(json.dumps({"compressor": "avg2", "prompt_format": trained_with}))
    with pytest.raises(EdgelalmError, match=f"trained on the {trained_with} prompt format .* --prompt-format"):
        open_checkpoint_adapter(open_checkpoint(tiny_checkpoint), adapter, bundle_format)


def test_an_adapter_whose_record_cannot_be_read_is_exported_as_before(tiny_checkpoint, tiny_lora_adapter, tmp_path):
    """The prompt format check read the record strictly: a truncated one stopped an export that
    worked before (the compressor check says nothing of such a record either)."""
    from edgelalm.constants import FINETUNE_RECORD_FILE
    from edgelalm.export.bundle import open_checkpoint_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_lora_adapter, adapter)
    (adapter / FINETUNE_RECORD_FILE).write_text('{"compressor": "avg2", "prompt_form')
    assert open_checkpoint_adapter(open_checkpoint(tiny_checkpoint), adapter, "base") is not None


def _template_only_in_tokenizer_config(tiny_checkpoint: Path, target: Path, template: object) -> Path:
    """An older fine-tune's layout: no processor template, the tokenizer's in tokenizer_config.json."""
    folder = _copy(tiny_checkpoint, target, template=False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_template_kept_only_by_the_tokenizer_is_the_checkpoints(tiny_checkpoint, tmp_path):
    """Qwen2AudioProcessor does not read the tokenizer's template: transformers' fallback took its
    place, labelled the checkpoint's. Reference: the tokenizer's own rendering (AutoTokenizer)."""
    from transformers import AutoTokenizer

    from edgelalm.training.finetune import load_for_training

    own = (
        (tiny_checkpoint / "chat_template.jinja").read_text().replace("You are a helpful assistant.", "You are PIRATE.")
    )
    assert "PIRATE" in own
    for layout, template in (
        ("text", own),
        ("named list", [{"name": "tools", "template": "x"}, {"name": "default", "template": own}]),
    ):
        folder = _template_only_in_tokenizer_config(tiny_checkpoint, tmp_path / layout.replace(" ", "-"), template)
        checkpoint = open_checkpoint(folder)
        pieces = prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)
        assert (pieces.template_source, pieces.chat_template) == ("checkpoint", own), layout
        conversation = [
            {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Hi?"}]}
        ]
        rendered = AutoTokenizer.from_pretrained(folder).apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        audio = "<|audio_bos|><|AUDIO|><|audio_eos|>"
        assert "You are PIRATE." in pieces.before_audio
        assert (
            rendered
            == pieces.before_audio.removesuffix("<|audio_bos|>")
            + audio
            + pieces.after_audio.removeprefix("<|audio_eos|>")
            + "Hi?"
            + pieces.after_prompt
        )
        _, processor = load_for_training(folder, "cpu")  # finetune trains on the prompt export feeds
        assert processor.chat_template == own


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (42, "chat_template must be text, got int"),
        ({"a": 1}, "chat_template must be text, got dict"),
        ([{"name": "tools", "template": "x"}], "a list of templates without one named 'default'"),
        ("  ", "chat_template is empty"),
    ],
)
def test_a_template_that_is_not_one_is_refused_in_one_line(tiny_checkpoint, tmp_path, template, message):
    from edgelalm.errors import EdgelalmError

    folder = _template_only_in_tokenizer_config(tiny_checkpoint, tmp_path / "odd", template)
    checkpoint = open_checkpoint(folder)
    with pytest.raises(EdgelalmError, match=re.escape(message)):
        prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)


def test_an_empty_template_file_is_refused(tiny_checkpoint, tmp_path):
    from edgelalm.errors import EdgelalmError

    folder = _copy(tiny_checkpoint, tmp_path / "empty-template")
    (folder / "chat_template.jinja").write_text("\n")
    with pytest.raises(EdgelalmError, match=r"chat_template\.jinja is empty"):
        prompt_pieces(open_checkpoint(folder).processor, folder, "empty-template", None)


@pytest.mark.parametrize(
    ("removed", "refusal"),
    [
        # vocab.json + merges.txt, with no record of the special tokens' ids (this tokenizer config,
        # as transformers 5 writes it, has no added_tokens_decoder; see the test of that below)
        (("tokenizer.json",), "have no ids recorded"),
        (("vocab.json", "merges.txt"), None),  # tokenizer.json
        (
            ("tokenizer.json", "vocab.json", "merges.txt"),
            "no tokenizer: a checkpoint holds tokenizer.json (or vocab.json and",
        ),
    ],
)
def test_a_checkpoint_without_tokenizer_files_is_refused_when_opened(tiny_checkpoint, tmp_path, removed, refusal):
    """Without them transformers built a tokenizer of the added tokens alone, and export failed at
    step 6 of 8 (no BPE merges), after the encoder's export."""
    folder = _copy(tiny_checkpoint, tmp_path / "no-tokenizer")
    for name in removed:
        (folder / name).unlink()
    if refusal is None:
        assert open_checkpoint(folder).processor.tokenizer("call mom").input_ids
        return
    with pytest.raises(EdgelalmError, match=re.escape(refusal)):
        open_checkpoint(folder)


def test_sliding_window_flags_that_leave_every_layer_full_are_full_attention(tiny_checkpoint, tmp_path):
    """use_sliding_window with max_window_layers past the last layer, or every layer_types entry
    full_attention: transformers builds no sliding layer, and export refused them as sliding."""
    from transformers import Qwen2AudioConfig

    from edgelalm.errors import EdgelalmError

    def edited(name: str, **fields) -> Path:
        folder = _copy(tiny_checkpoint, tmp_path / name)
        config = json.loads((folder / "config.json").read_text())
        config["text_config"].pop("layer_types", None)  # recomputed from the flags where not given
        config["text_config"].update(fields, sliding_window=16)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    layers = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]["num_hidden_layers"]
    for name, fields in (
        ("window-past-the-layers", {"use_sliding_window": True, "max_window_layers": layers}),
        ("every-layer-full", {"use_sliding_window": True, "layer_types": ["full_attention"] * layers}),
    ):
        folder = edited(name, **fields)
        assert "sliding_attention" not in Qwen2AudioConfig.from_pretrained(folder).text_config.layer_types
        open_checkpoint(folder)
    folder = edited("sliding", use_sliding_window=True, max_window_layers=0)
    with pytest.raises(EdgelalmError, match="uses sliding-window attention"):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    "sources",
    [
        ("chat_template.jinja", "chat_template.json"),
        ("chat_template.jinja", "processor_config.json"),
        ("chat_template.json", "processor_config.json"),
        ("chat_template.jinja", "tokenizer_config.json"),
    ],
)
def test_a_folder_with_several_templates_exports_the_one_transformers_renders(tiny_checkpoint, tmp_path, sources):
    """A newer transformers' files saved over an older folder leave two templates: export took
    chat_template.jinja first, transformers' processor the legacy chat_template.json or
    processor_config.json's key first, and the bundle's system prompt differed (exit 0).
    Reference: Qwen2AudioProcessor.from_pretrained's own template."""
    folder = _copy(tiny_checkpoint, tmp_path / "two-templates", template=False)
    own = (tiny_checkpoint / "chat_template.jinja").read_text()
    for number, name in enumerate(sources):
        template = own.replace("You are a helpful assistant.", f"You are assistant {number}.")
        if name == "chat_template.jinja":
            (folder / name).write_text(template)
        elif name == "chat_template.json":
            (folder / name).write_text(json.dumps({"chat_template": template}))
        else:
            config = json.loads((folder / name).read_text())
            (folder / name).write_text(json.dumps({**config, "chat_template": template}))
    checkpoint = open_checkpoint(folder)
    pieces = prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)
    reference = Qwen2AudioProcessor.from_pretrained(folder).chat_template
    if sources[1] == "tokenizer_config.json":  # the processor does not read the tokenizer's
        reference = (folder / "chat_template.jinja").read_text()
    assert "You are assistant" in reference and pieces.chat_template == reference


def test_a_template_with_the_text_before_the_audio_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    """transformers renders it; a bundle feeds the text after the audio (it was a ValueError traceback)."""
    folder = _copy(tiny_checkpoint, tmp_path / "text-first", template=False)
    (folder / "chat_template.jinja").write_text(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
        "{% for part in message['content'] if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% endfor %}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    checkpoint = open_checkpoint(folder)
    with pytest.raises(EdgelalmError, match="puts the text before the audio"):
        prompt_pieces(checkpoint.processor, folder, checkpoint.name, None)


def test_a_tied_decoder_saved_without_lm_head_is_trained_and_measured_on_its_embeddings(
    tiny_checkpoint, tmp_path, capfd
):
    """text_config.tie_word_embeddings (as Qwen2-0.5B's) and no lm_head in the weights: export and
    llama.cpp read the embeddings as the output layer, but transformers 5 ties only where the
    top-level config says so, and gave finetune (and bench's PyTorch reference) a random lm_head,
    reported as MISSING."""
    from safetensors.torch import load_file, save_file

    from edgelalm.export.checkpoint import load_model

    folder = _copy(tiny_checkpoint, tmp_path / "tied")
    config = json.loads((folder / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(folder / "model.safetensors")
    dropped = [name for name in tensors if name.endswith("lm_head.weight")]
    assert len(dropped) == 1
    save_file({name: t for name, t in tensors.items() if name not in dropped}, folder / "model.safetensors")
    capfd.readouterr()
    model = load_model(folder)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert "MISSING" not in capfd.readouterr().err
    # a checkpoint with its own lm_head keeps it
    untied = load_model(tiny_checkpoint)
    assert untied.get_output_embeddings().weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()


def test_a_decoder_whose_activation_is_named_swish_exports(tiny_checkpoint, tmp_path):
    """transformers computes "swish" as SiLU, what llama.cpp's qwen2 graph computes: it was refused."""
    import torch
    from transformers.activations import ACT2FN

    folder = _copy(tiny_checkpoint, tmp_path / "swish")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_act"] = "swish"
    (folder / "config.json").write_text(json.dumps(config))
    assert open_checkpoint(folder).config.text_config.hidden_act == "swish"
    values = torch.linspace(-8, 8, 101)
    torch.testing.assert_close(ACT2FN["swish"](values), torch.nn.functional.silu(values), rtol=0, atol=0)
