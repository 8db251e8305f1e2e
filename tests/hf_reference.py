"""transformers' own Qwen2-Audio path, for tests to compare edgelalm against."""

import numpy as np
import torch

RIGHT_CONTEXT_FRAMES = 2  # the encoder graph's documented input contract


class TransformersAudioTower:
    """Valid audio-tower frames as Qwen2AudioForConditionalGeneration's forward computes them:
    the processor pads the clip to the full window and the tower runs with its attention mask;
    a forward hook captures the tower's output."""

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor
        self.captured = None
        self.tower = (
            model.get_base_model().model.audio_tower if hasattr(model, "get_base_model") else model.model.audio_tower
        )
        self.tower.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self.captured = output.last_hidden_state

    def __call__(self, audio: np.ndarray):
        """(valid frames [L, D], the clip's mel frames, the two mel frames after them)."""
        messages = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": "hi"}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            self.model(**inputs)
        valid_mel = int(inputs["feature_attention_mask"].sum())
        audio_token_id = self.tower_config_audio_token_id()
        valid_frames = int((inputs["input_ids"] == audio_token_id).sum())
        frames = self.captured[0, :valid_frames].numpy()
        window = inputs["input_features"][0].numpy()
        padded = np.pad(window, ((0, 0), (0, RIGHT_CONTEXT_FRAMES)))
        return frames, window[:, :valid_mel], padded[:, valid_mel : valid_mel + RIGHT_CONTEXT_FRAMES]

    def tower_config_audio_token_id(self) -> int:
        return self.processor.tokenizer.convert_tokens_to_ids(self.processor.audio_token)


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise under a slow envelope: enough structure for segment boundaries, no downloads."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) / 1600.0)
    return (0.2 * envelope * rng.standard_normal(n)).astype(np.float32)
