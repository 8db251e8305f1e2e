"""transformers' own Qwen2-Audio path, for tests to compare edgelalm against."""

import numpy as np
import reference
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


def reference_window_embeddings(
    hf, audio: np.ndarray, compressor: str, factor: int, window_seconds: int
) -> list[torch.Tensor]:
    """Each encoder window's audio embeddings [A_w, H], from transformers + peft + the paper's
    definitions: each window as its own clip, compressed, projected."""
    model, processor = hf
    tower = TransformersAudioTower(model, processor)
    base = model.get_base_model()
    window = window_seconds * 16000
    embeddings = []
    for start in range(0, len(audio), window):
        frames, _, _ = tower(audio[start : start + window])
        with torch.no_grad():
            tokens = torch.from_numpy(reference.compress(compressor, factor, frames))
            embeddings.append(base.model.multi_modal_projector(tokens))
    return embeddings


def reference_inputs(hf, audio: np.ndarray, compressor: str, factor: int, prompt: str, window_seconds: int):
    """(inputs_embeds [1, N, H], audio embeddings [A, H], end ids): every window's embeddings
    (`reference_window_embeddings`) in the chat template around the prompt."""
    model, processor = hf
    base = model.get_base_model()
    audio_embeddings = torch.cat(reference_window_embeddings(hf, audio, compressor, factor, window_seconds))
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    before, after = text.split(processor.audio_token)
    tokenizer = processor.tokenizer
    embed = base.get_input_embeddings()
    with torch.no_grad():
        inputs_embeds = torch.cat(
            [
                embed(torch.tensor(tokenizer(before, add_special_tokens=False).input_ids)),
                audio_embeddings,
                embed(torch.tensor(tokenizer(after, add_special_tokens=False).input_ids)),
            ]
        )[None]
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return inputs_embeds, audio_embeddings, end_ids


def reference_answer(
    hf, audio: np.ndarray, compressor: str, factor: int, max_tokens: int, prompt: str, window_seconds: int
):
    """Greedy answer and audio-token count, from transformers + peft + the paper's definitions."""
    model, processor = hf
    inputs_embeds, audio_embeddings, end_ids = reference_inputs(hf, audio, compressor, factor, prompt, window_seconds)
    with torch.no_grad():
        generated = model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=end_ids,
            pad_token_id=end_ids[-1],
        )[0].tolist()
    answer = [t for t in generated if t not in end_ids]
    return processor.tokenizer.decode(answer), audio_embeddings.shape[0]


def torch_encoder_layers(head_file) -> tuple[list, int]:
    """A head file's own layers as torch's own pre-norm TransformerEncoderLayer (GELU, no
    dropout), each loaded with the file's tensors (none where the file has none), and the
    positions each side they attend to (its metadata; 0: the whole window)."""
    from safetensors import safe_open

    with safe_open(str(head_file), framework="pt") as stored:
        names, metadata = list(stored.keys()), stored.metadata() or {}
        tensors = {name: stored.get_tensor(name).float() for name in names if name.startswith("layers.")}
    layers = []
    for index in range(len({name.split(".")[2] for name in tensors})):
        prefix = f"layers.stack.{index}."
        own = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
        feed_forward, width = own["feed_forward_up.weight"].shape
        layer = torch.nn.TransformerEncoderLayer(
            width, int(metadata["edgelalm_ctc_attention_heads"]), feed_forward, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        ).eval()  # fmt: skip
        torch_names = {
            "self_attn.in_proj": "qkv", "self_attn.out_proj": "attention_output", "norm1": "attention_norm",
            "norm2": "feed_forward_norm", "linear1": "feed_forward_up", "linear2": "feed_forward_down",
        }  # fmt: skip
        layer.load_state_dict(
            {
                (f"{torch_name}_{kind}" if torch_name == "self_attn.in_proj" else f"{torch_name}.{kind}"): own[
                    f"{name}.{kind}"
                ]
                for torch_name, name in torch_names.items()
                for kind in ("weight", "bias")
            }
        )
        layers.append(layer)
    return layers, int(metadata.get("edgelalm_ctc_attention_span", "0"))


def run_layers(layers: tuple[list, int], rows: np.ndarray) -> np.ndarray:
    """`torch_encoder_layers` over `rows` [T, H] (one window), a span as torch's own attention
    mask (True: not attended); `rows` unchanged where there are none."""
    stack, span = layers
    if not stack:
        return rows
    hidden = torch.from_numpy(rows.astype(np.float32))[None]
    offsets = np.arange(len(rows))
    mask = torch.from_numpy(np.abs(offsets[None] - offsets[:, None]) > span) if span else None
    with torch.no_grad():
        for layer in stack:
            hidden = layer(hidden, src_mask=mask)
    return hidden[0].numpy()


def transformer_layers(head_file, rows: np.ndarray) -> np.ndarray:
    """A head file's own layers over `rows` [T, H] (one window), by torch's TransformerEncoderLayer."""
    return run_layers(torch_encoder_layers(head_file), rows)


def ctc_head_log_probs(head_file, model, audio_embeddings: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """A CTC head file's log-probabilities by TokenCtc's definition, in numpy: each window's rows
    (`audio_embeddings`: one window, or a list of them) through the head's own layers if it has
    any (torch's TransformerEncoderLayer, `torch_encoder_layers`), a realigned head's residual map
    (x + x @ transform.T), then the cosine similarity to [blank, the model's input embeddings],
    scaled, log-softmax (a zero row, as a padded vocabulary's unused ones, has cosine 0: torch's
    normalize divides by at least 1e-12)."""
    import math

    from safetensors.numpy import load_file

    windows = audio_embeddings if isinstance(audio_embeddings, list) else [audio_embeddings]
    head = load_file(str(head_file))
    embeddings = model.get_input_embeddings().weight.detach().numpy().astype(np.float64)
    vocabulary = np.vstack([head["blank"][None].astype(np.float64), embeddings])
    vocabulary /= np.maximum(np.linalg.norm(vocabulary, axis=1, keepdims=True), 1e-12)
    layers = torch_encoder_layers(head_file)  # read once, run on each window
    directions = np.concatenate([run_layers(layers, window) for window in windows]).astype(np.float64)
    if "transform" in head:
        directions = directions + directions @ head["transform"].astype(np.float64).T
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    logits = directions @ vocabulary.T * math.exp(float(head["log_scale"]))
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
