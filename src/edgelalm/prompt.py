"""The prompt around the audio: the checkpoint's chat template rendered for one user turn
[audio, prompt] and cut into the pieces of text the runtime feeds around the audio embeddings.

Export writes the pieces into the manifest; training builds its sequences from the same pieces,
so the model learns exactly the token sequence the runtime feeds. Torch-free: it needs only the
processor's tokenizer.
"""

from __future__ import annotations

from typing import Any

from edgelalm.errors import EdgelalmError
from edgelalm.manifest import PromptInfo

DEFAULT_PROMPT = "Transcribe the audio."
# Stands in for the user's prompt while the chat template is split around it.
_PROMPT_SENTINEL = "\ue000PROMPT\ue000"


def chat_template_pieces(processor: Any, source: str) -> PromptInfo:
    """The pieces for a loaded Qwen2-Audio processor; `source` names the checkpoint in errors."""
    template = processor.chat_template
    if not template:
        raise EdgelalmError(f"{source}: the processor has no chat template")
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": "clip.wav"}, {"type": "text", "text": _PROMPT_SENTINEL}],
        }
    ]
    rendered = processor.tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    audio_block = processor.audio_bos_token + processor.audio_token + processor.audio_eos_token
    if rendered.count(audio_block) != 1 or rendered.count(_PROMPT_SENTINEL) != 1:
        raise EdgelalmError(
            f"{source}: the chat template does not render one audio as {audio_block} followed by the text"
        )
    before_audio, after_audio = rendered.split(audio_block)
    between, after_prompt = after_audio.split(_PROMPT_SENTINEL)
    return PromptInfo(
        chat_template=template,
        before_audio=before_audio + processor.audio_bos_token,
        after_audio=processor.audio_eos_token + between,
        after_prompt=after_prompt,
        default_prompt=DEFAULT_PROMPT,
    )
