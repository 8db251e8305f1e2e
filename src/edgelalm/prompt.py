"""The prompt around the audio: the checkpoint's chat template rendered for one user turn
[audio, prompt] and cut into the pieces of text the runtime feeds around the audio embeddings.

Two formats, as Qwen2-Audio is published: "instruct" (Qwen2-Audio-7B-Instruct: the chat template;
a checkpoint that carries none gets Qwen2-Audio-Instruct's own template, shipped here as
data/chatml_qwen2_audio.jinja, instead of relying on transformers' fallback) and "base"
(Qwen2-Audio-7B: `<|audio_bos|><|AUDIO|><|audio_eos|>` then a task text, as its model card shows).

Export writes the pieces into the manifest; training builds its sequences from the same pieces,
so the model learns exactly the token sequence the runtime feeds. Torch-free: it needs only the
processor's tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgelalm.constants import PromptFormat, TemplateSource
from edgelalm.errors import EdgelalmError, error_gist
from edgelalm.files import read_json
from edgelalm.manifest import PromptInfo

DEFAULT_PROMPT = "Transcribe the audio."
# The base model's task text as its model card shows it (other tasks: --prompt).
BASE_DEFAULT_PROMPT = "Generate the caption in English:"
INSTRUCT_TEMPLATE_FILE = Path(__file__).parent / "data" / "chatml_qwen2_audio.jinja"
TEMPLATE_SOURCE_DESCRIPTIONS: dict[TemplateSource, str] = {
    "checkpoint": "the checkpoint's chat template",
    "edgelalm": "Qwen2-Audio-Instruct's template from edgelalm; the checkpoint carries none",
    "none": "no chat template",
}
# Where a Hugging Face checkpoint keeps its chat template, in the order transformers 5's processor
# takes it where a folder has several (an older one's files saved over by a newer transformers):
# processor_config.json's key, then the legacy chat_template.json, then chat_template.jinja; then
# the tokenizer's (older Qwen2 fine-tunes keep it only there, which Qwen2AudioProcessor.from_pretrained
# does not read: its fallback template took its place). The .jinja file is the template itself;
# the others hold it under "chat_template".
_TEMPLATE_FILES = ("processor_config.json", "chat_template.json", "chat_template.jinja", "tokenizer_config.json")
_MAX_TEMPLATE_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 64 << 20
# The published base model's folder or repository name: Qwen2-Audio-7B, not ...-Instruct.
_BASE_NAME = re.compile(r"qwen2-audio-7b", re.IGNORECASE)


def instruct_template() -> str:
    """Qwen2-Audio-Instruct's chat template, as edgelalm ships it."""
    return INSTRUCT_TEMPLATE_FILE.read_text(encoding="utf-8")


def checkpoint_template(folder: Path) -> str | None:
    """The chat template the checkpoint folder itself carries (not transformers' fallback), None
    where it carries none; one that is not text, or is empty, refused in one line. Of a list of
    named templates (the tokenizer's), the "default" one, as transformers takes it."""
    for name in _TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if path.suffix == ".jinja":
            if path.stat().st_size > _MAX_TEMPLATE_BYTES:
                raise EdgelalmError(f"{path} is over {_MAX_TEMPLATE_BYTES:,} bytes: no chat template is that long")
            try:
                return _nonempty_template(path.read_text(encoding="utf-8"), str(path))
            except UnicodeDecodeError:
                raise EdgelalmError(f"{path} is not UTF-8 text") from None
        config = read_json(path, _MAX_CONFIG_BYTES)
        template = config.get("chat_template") if isinstance(config, dict) else None
        if template is None:
            continue
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
            if "default" not in named:
                raise EdgelalmError(f"{path}: chat_template is a list of templates without one named 'default'")
            template = named["default"]
        if not isinstance(template, str):
            raise EdgelalmError(f"{path}: chat_template must be text, got {type(template).__name__}")
        return _nonempty_template(template, f"{path}: chat_template")
    return None


def _nonempty_template(template: str, where: str) -> str:
    if not template.strip():
        raise EdgelalmError(f"{where} is empty; remove it to use Qwen2-Audio-Instruct's template")
    return template


def checkpoint_has_template(folder: Path) -> bool:
    """Whether the checkpoint folder itself carries a chat template (not transformers' fallback)."""
    return checkpoint_template(folder) is not None


def detect_prompt_format(folder: Path, name: str) -> PromptFormat:
    """ "instruct" for a checkpoint with its own template or not named as the base release;
    "base" for a template-less checkpoint named Qwen2-Audio-7B (the base model's layout)."""
    return _format_for(checkpoint_template(folder), name)


def _format_for(template: str | None, name: str) -> PromptFormat:
    return "base" if template is None and _BASE_NAME.fullmatch(name) else "instruct"


def prompt_pieces(processor: Any, folder: Path, name: str, prompt_format: PromptFormat | None) -> PromptInfo:
    """The pieces for a checkpoint in `prompt_format` (None: detected)."""
    template = checkpoint_template(folder)  # read once: the format and the pieces both ask
    if (prompt_format or _format_for(template, name)) == "base":
        return base_prompt_pieces(processor)
    if template is not None:
        return chat_template_pieces(processor, str(folder), template=template)
    pieces = chat_template_pieces(processor, str(folder), template=instruct_template())
    return dataclasses.replace(pieces, template_source="edgelalm")


def base_prompt_pieces(processor: Any) -> PromptInfo:
    """Qwen2-Audio base: the audio, then the task text; no chat turns, no system prompt."""
    return PromptInfo(
        chat_template="",
        before_audio=processor.audio_bos_token,
        after_audio=processor.audio_eos_token,
        after_prompt="",
        default_prompt=BASE_DEFAULT_PROMPT,
        format="base",
        template_source="none",
    )


# A chat template renders one turn in milliseconds; a hostile one may loop for hours or render
# gigabytes (nested range(100000) loops: 24 GB before the kernel killed the export).
_RENDER_SECONDS = 5.0
_MAX_RENDERED_CHARACTERS = 1_000_000


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds` (a SIGALRM timer; the main thread only,
    elsewhere no limit). Jinja runs Python code, where the handler can raise."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"rendering took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Stands in for the user's prompt while the chat template is split around it.
_PROMPT_SENTINEL = "\ue000PROMPT\ue000"


def chat_template_pieces(processor: Any, source: str, template: str | None = None) -> PromptInfo:
    """The pieces for a loaded Qwen2-Audio processor (its template, or `template`); `source` names
    the checkpoint in errors."""
    template = template or processor.chat_template
    if not template:
        raise EdgelalmError(f"{source}: the processor has no chat template")
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": _PROMPT_SENTINEL}],
        }
    ]
    try:
        with _time_limit(_RENDER_SECONDS):
            rendered = processor.tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
    except Exception as error:  # jinja's syntax, undefined and sandbox errors, a raise_exception(), ...
        raise EdgelalmError(f"{source}: its chat template cannot be rendered: {error_gist(error)}") from None
    if not isinstance(rendered, str) or len(rendered) > _MAX_RENDERED_CHARACTERS:
        raise EdgelalmError(f"{source}: its chat template renders more than {_MAX_RENDERED_CHARACTERS} characters")
    audio_block = processor.audio_bos_token + processor.audio_token + processor.audio_eos_token
    if rendered.count(audio_block) != 1 or rendered.count(_PROMPT_SENTINEL) != 1:
        raise EdgelalmError(
            f"{source}: the chat template does not render one audio as {audio_block} followed by the text"
        )
    before_audio, after_audio = rendered.split(audio_block)
    if _PROMPT_SENTINEL not in after_audio:  # a bundle feeds the prompt's text after the audio
        raise EdgelalmError(
            f"{source}: the chat template puts the text before the audio; edgelalm's bundles need it after"
        )
    between, after_prompt = after_audio.split(_PROMPT_SENTINEL)
    return PromptInfo(
        chat_template=template,
        before_audio=before_audio + processor.audio_bos_token,
        after_audio=processor.audio_eos_token + between,
        after_prompt=after_prompt,
        default_prompt=DEFAULT_PROMPT,
    )
