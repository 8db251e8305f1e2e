"""Read, validate and merge a peft LoRA adapter trained on the language model.

The decoder GGUF is written tensor by tensor, so the merge is per tensor too:
`LoraAdapter.delta(name)` gives scaling * (B @ A) for one canonical decoder weight
(Qwen2ForCausalLM naming: model.layers.N.self_attn.q_proj.weight, lm_head.weight, ...),
read from adapter_model.safetensors when asked. Pickle (adapter_model.bin) is never loaded.

Scaling follows peft's LoRA layers: alpha / r, or alpha / sqrt(r) with use_rslora, where r and
alpha may be overridden per module by rank_pattern / alpha_pattern (a pattern applies when it
matches the end of the module's dotted path at a name boundary; the first matching pattern wins).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import safe_open

from edgelalm.checks import is_real_number, is_whole_number
from edgelalm.constants import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MAX_LORA_ALPHA
from edgelalm.errors import EdgelalmError
from edgelalm.files import safetensors_file, sha256_of

PICKLE_WEIGHTS_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
# peft's LoraConfig defaults, used when adapter_config.json leaves a field out.
DEFAULT_RANK = 8
DEFAULT_ALPHA = 8
# PeftModel.save_pretrained prefixes keys with this; transformers' integrated adapters do not.
PEFT_MODEL_PREFIX = "base_model.model."
# Module path as trained (after the prefix) -> canonical Qwen2ForCausalLM path; first match wins.
MODULE_PATH_RENAMES = (
    ("model.language_model.", "model."),  # transformers 5 Qwen2AudioForConditionalGeneration
    ("language_model.model.", "model."),  # transformers 4 / release naming
    ("language_model.lm_head", "lm_head"),  # transformers 4 / release naming
    ("language_model.", "model."),  # Qwen2AudioModel's bare language model (transformers 5)
    ("model.", "model."),  # bare Qwen2ForCausalLM
    ("lm_head", "lm_head"),  # Qwen2ForCausalLM, and Qwen2-Audio in transformers 5
)
NOT_LANGUAGE_MODEL_PARTS = ("audio_tower", "multi_modal_projector")
LORA_TENSOR_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.(?P<adapter_name>[^.]+))?\.weight")
# peft saves a frozen copy of lm_head / embedding layers it wraps (save_embedding_layers); not a delta.
BASE_LAYER_COPY_KEY = re.compile(r"(?P<module>.+)\.base_layer\.weight")
# Config fields whose non-default value changes what the adapter does beyond W + scaling * B @ A.
UNSUPPORTED_FEATURES: tuple[tuple[str, str], ...] = (
    ("use_dora", "DoRA (use_dora), whose weight-decomposed update is not a plain B @ A"),
    ("lora_bias", "a LoRA bias (lora_bias), which also changes the layers' biases"),
    ("fan_in_fan_out", "fan_in_fan_out (Conv1D-style transposed weights), which Qwen2 linear layers do not use"),
    ("modules_to_save", "modules_to_save (fully trained module copies)"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
    ("layer_replication", "layer_replication, which changes the number of decoder layers"),
    ("target_parameters", "target_parameters (LoRA on raw parameters)"),
    ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens), which cannot be merged"),
    ("use_qalora", "QALoRA (use_qalora), whose update pools the inputs"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
    ("arrow_config", "Arrow routing (arrow_config)"),
    ("kasa_config", "KaSA (kasa_config), which also rewrites the base weights"),
    ("monteclora_config", "MonteCLoRA (monteclora_config)"),
)
# init_lora_weights values that rewrite the base weights at initialisation: the adapter is then relative
# to a modified base model unless peft converted it when saving (which resets init_lora_weights to true).
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear layer: where its factors are stored and how they are scaled."""

    weight_name: str  # canonical decoder weight, e.g. model.layers.0.self_attn.q_proj.weight
    trained_path: str  # module path as trained, e.g. model.language_model.layers.0.self_attn.q_proj
    lora_A_key: str
    lora_B_key: str
    rank: int
    alpha: float
    scaling: float


@dataclass(frozen=True)
class LoraAdapter:
    """A validated LoRA adapter on the language model; deltas are read per tensor on demand."""

    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]  # canonical module names, e.g. model.layers.0.self_attn.q_proj
    sha256: str  # of adapter_model.safetensors
    use_rslora: bool = False
    peft_type: str = "LORA"
    base_model_name: str | None = None
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    modules: Mapping[str, LoraModule] = field(default_factory=dict, repr=False, compare=False)

    @property
    def weights_file(self) -> Path:
        return self.path / ADAPTER_WEIGHTS_FILE

    def factors(self, tensor_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A module's LoRA factors (A, B) in float32, refused when not finite: merged or written
        as an adapter GGUF, NaN answers `!!!!` with exit 0."""
        module = self.modules[tensor_name]
        with safe_open(str(self.weights_file), framework="pt") as weights:
            stored = weights.get_tensor(module.lora_A_key), weights.get_tensor(module.lora_B_key)
        if not all(factor.dtype.is_floating_point for factor in stored):  # int32 or bool was cast silently
            raise EdgelalmError(
                f"{self.weights_file}: the LoRA factors of {tensor_name} are {stored[0].dtype} and {stored[1].dtype}, "
                "not floating point"
            )
        lora_A, lora_B = (factor.to(torch.float32) for factor in stored)
        if not (torch.isfinite(lora_A).all() and torch.isfinite(lora_B).all()):
            raise EdgelalmError(f"{self.weights_file}: the LoRA factors of {tensor_name} hold NaN or infinite values")
        return lora_A, lora_B

    def delta(self, tensor_name: str) -> torch.Tensor | None:
        """scaling * (B @ A) in float32 with the weight's shape for a canonical weight name, or None."""
        module = self.modules.get(tensor_name)
        if module is None:
            return None
        lora_A, lora_B = self.factors(tensor_name)
        return (lora_B @ lora_A) * module.scaling  # peft's order of operations: (B @ A) * scaling

    def describe(self) -> dict[str, Any]:
        """What the bundle manifest records about the merged adapter."""
        return {
            "peft_type": self.peft_type,
            "rank": self.rank,
            "alpha": self.alpha,
            "scaling_rule": "alpha / sqrt(r)" if self.use_rslora else "alpha / r",
            "scaling": scaling_of(self.rank, self.alpha, self.use_rslora),
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "target_modules": summarize_modules(self.target_modules),
            "base_model": self.base_model_name,
            "file": ADAPTER_WEIGHTS_FILE,
            "sha256": self.sha256,
        }


def scaling_of(rank: int, alpha: float, use_rslora: bool) -> float:
    """peft's LoRA scaling: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def summarize_modules(module_names: tuple[str, ...]) -> dict[str, Any]:
    """Compress canonical module names to the projections adapted per layer, the layers, and the rest."""
    layer_module = re.compile(r"model\.layers\.(\d+)\.(.+)")
    projections: set[str] = set()
    layers: set[int] = set()
    other: list[str] = []
    for name in module_names:
        match = layer_module.fullmatch(name)
        if match:
            layers.add(int(match.group(1)))
            projections.add(match.group(2))
        else:
            other.append(name)
    return {
        "layer_modules": sorted(projections),
        "layers": len(layers),
        "other_modules": sorted(other),
        "count": len(module_names),
    }


def open_adapter(path: Path, decoder_shapes: dict[str, tuple[int, ...]]) -> LoraAdapter:
    """Validate the peft LoRA adapter folder `path` against the decoder (canonical name -> shape)."""
    path = Path(path)
    weights_file = check_adapter_files(path)
    config = read_adapter_config(path / ADAPTER_CONFIG_FILE)
    check_supported(config, path)
    rank, alpha = config_rank(config, path), config_alpha(config, path)
    use_rslora = bool(config.get("use_rslora", False))
    rank_pattern = config_pattern(config, "rank_pattern", path)
    alpha_pattern = config_pattern(config, "alpha_pattern", path)

    factor_keys, base_layer_copies, factor_shapes = read_adapter_keys(weights_file)
    modules: dict[str, LoraModule] = {}
    for trained_path, keys in sorted(factor_keys.items()):
        module_rank = int(pattern_value(rank_pattern, trained_path, rank))
        module_alpha = float(pattern_value(alpha_pattern, trained_path, alpha))
        weight_name = canonical_module(trained_path, path) + ".weight"
        lora_A_key, lora_B_key = keys.get("A"), keys.get("B")
        if lora_A_key is None or lora_B_key is None:
            missing = "lora_A" if lora_A_key is None else "lora_B"
            raise EdgelalmError(f"{weights_file}: {trained_path} has no {missing} weight; the file is incomplete")
        check_factor_shapes(
            weights_file,
            weight_name,
            decoder_shapes,
            (lora_A_key, factor_shapes[lora_A_key]),
            (lora_B_key, factor_shapes[lora_B_key]),
            module_rank,
        )
        if weight_name in modules:
            raise EdgelalmError(
                f"{weights_file}: {modules[weight_name].trained_path} and {trained_path} both adapt {weight_name}"
            )
        modules[weight_name] = LoraModule(
            weight_name=weight_name,
            trained_path=trained_path,
            lora_A_key=lora_A_key,
            lora_B_key=lora_B_key,
            rank=module_rank,
            alpha=module_alpha,
            scaling=scaling_of(module_rank, module_alpha, use_rslora),
        )
    if not modules:
        raise EdgelalmError(f"{weights_file} holds no LoRA weights (lora_A / lora_B)")
    check_base_layer_copies(weights_file, base_layer_copies, factor_keys, factor_shapes, decoder_shapes)
    return LoraAdapter(
        path=path,
        rank=rank,
        alpha=alpha,
        target_modules=tuple(sorted(name.removesuffix(".weight") for name in modules)),
        sha256=sha256_of(weights_file),
        use_rslora=use_rslora,
        peft_type=str(config["peft_type"]),
        base_model_name=str(config["base_model_name_or_path"]) if config.get("base_model_name_or_path") else None,
        rank_pattern=MappingProxyType(rank_pattern),
        alpha_pattern=MappingProxyType(alpha_pattern),
        modules=MappingProxyType(modules),
    )


def check_adapter_files(path: Path) -> Path:
    """The folder must hold adapter_config.json and adapter_model.safetensors; returns the latter."""
    if not path.exists():
        raise EdgelalmError(f"adapter folder not found: {path}")
    if not path.is_dir():
        raise EdgelalmError(
            f"{path} is a file; an adapter is a peft folder (adapter_config.json, adapter_model.safetensors)"
        )
    weights_file = path / ADAPTER_WEIGHTS_FILE
    if not weights_file.is_file():
        pickles = [name for name in PICKLE_WEIGHTS_FILES if (path / name).is_file()]
        if pickles:
            raise EdgelalmError(
                f"{path} holds only pickle adapter weights ({', '.join(pickles)}); edgelalm reads safetensors "
                "only, since unpickling can run arbitrary code. Re-save the adapter with peft's "
                "save_pretrained(..., safe_serialization=True) from a source you trust"
            )
        raise EdgelalmError(f"{path} is not a peft adapter folder: it has no {ADAPTER_WEIGHTS_FILE}")
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise EdgelalmError(f"{path} is not a peft adapter folder: it has no {ADAPTER_CONFIG_FILE}")
    return weights_file


def read_adapter_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EdgelalmError(f"{config_file} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise EdgelalmError(f"{config_file} is not a peft adapter config (expected a JSON object)")
    return config


def check_supported(config: dict[str, Any], path: Path) -> None:
    """Only plain LoRA (optionally rank-stabilised, with rank/alpha patterns) is merged."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise EdgelalmError(f"{path} is a {peft_type or 'unknown'!r} adapter, not LoRA (peft_type 'LORA')")
    for key, feature in UNSUPPORTED_FEATURES:
        if config.get(key):
            raise EdgelalmError(f"{path}: the adapter uses {feature}; edgelalm merges plain LoRA only")
    bias = config.get("bias", "none")
    if bias != "none":
        raise EdgelalmError(
            f"{path}: the adapter trains biases (bias={bias!r}); edgelalm merges plain LoRA only (bias='none')"
        )
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_REWRITING_INITS):
        raise EdgelalmError(
            f"{path}: the adapter was initialised with init_lora_weights={init!r}, which rewrites the base weights; "
            "save it with peft's path_initial_model_for_weight_conversion to get a plain LoRA adapter"
        )


def config_rank(config: dict[str, Any], path: Path) -> int:
    rank = config.get("r", DEFAULT_RANK)
    if not is_whole_number(rank) or rank <= 0:
        raise EdgelalmError(f"{path / ADAPTER_CONFIG_FILE}: r must be a positive integer, not {rank!r}")
    return rank


def config_alpha(config: dict[str, Any], path: Path) -> float:
    alpha = config.get("lora_alpha", DEFAULT_ALPHA)
    if not _valid_alpha(alpha):
        raise EdgelalmError(
            f"{path / ADAPTER_CONFIG_FILE}: lora_alpha must be a number above 0 and at most {MAX_LORA_ALPHA:g}, "
            f"not {alpha!r}"
        )
    return float(alpha)


def _valid_alpha(alpha: object) -> bool:
    """Past about 10^38 a scaling overflows float32 (an adapter GGUF's); nothing trains near it."""
    return is_real_number(alpha) and 0 < alpha <= MAX_LORA_ALPHA


# peft matches a pattern with re.fullmatch: a nested quantifier (`(.*)*X`) backtracks for ever on a
# module path, so a pattern may hold at most this many and none on a group.
_MAX_PATTERN_QUANTIFIERS = 2
_QUANTIFIER = re.compile(r"(?<!\\)(?:[*+{]|(?<!\()\?)")
_QUANTIFIED_GROUP = re.compile(r"(?<!\\)\)\s*[*+?{]")


def config_pattern(config: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """rank_pattern / alpha_pattern: module pattern -> number, in file order (peft's first match wins)."""
    pattern = config.get(key) or {}
    if not isinstance(pattern, dict):
        raise EdgelalmError(f"{path / ADAPTER_CONFIG_FILE}: {key} must be an object (pattern -> value)")
    for module_pattern, value in pattern.items():
        valid = is_whole_number(value) and value > 0 if key == "rank_pattern" else _valid_alpha(value)
        if not valid:
            raise EdgelalmError(f"{path / ADAPTER_CONFIG_FILE}: {key}[{module_pattern!r}] = {value!r} is not valid")
        if (
            len(module_pattern) > 300
            or len(_QUANTIFIER.findall(module_pattern)) > _MAX_PATTERN_QUANTIFIERS
            or _QUANTIFIED_GROUP.search(module_pattern)
        ):
            raise EdgelalmError(
                f"{path / ADAPTER_CONFIG_FILE}: {key} key {module_pattern!r} is too complex a pattern (at most "
                f"{_MAX_PATTERN_QUANTIFIERS} repeats, none of a group, 300 characters): name the modules plainly"
            )
        try:
            re.compile(module_pattern)
        except re.error as error:
            raise EdgelalmError(
                f"{path / ADAPTER_CONFIG_FILE}: {key} key {module_pattern!r} is not a regex: {error}"
            ) from None
    return pattern


def pattern_value(pattern: dict[str, Any], trained_path: str, default: Any) -> Any:
    """The value of the first pattern matching the end of `trained_path` at a name boundary, as peft matches."""
    for module_pattern, value in pattern.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{module_pattern})", trained_path):
            return value
    return default


def read_adapter_keys(
    weights_file: Path,
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, tuple[int, ...]]]:
    """From the safetensors header: trained module path -> {'A': key, 'B': key}, trained module path ->
    key of its saved base-layer copy, and key -> shape."""
    with safetensors_file(weights_file) as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    factor_keys: dict[str, dict[str, str]] = {}
    base_layer_copies: dict[str, str] = {}
    adapter_names: set[str] = set()
    for key in sorted(shapes):
        check_language_model_key(key, weights_file)
        match = LORA_TENSOR_KEY.fullmatch(key)
        if match is None:
            copy = BASE_LAYER_COPY_KEY.fullmatch(key)
            if copy:
                base_layer_copies[strip_prefix(copy["module"])] = key
                continue
            raise EdgelalmError(f"{weights_file}: unexpected tensor {key}; {describe_unexpected(key)}")
        if match["adapter_name"]:
            adapter_names.add(match["adapter_name"])
        factor_keys.setdefault(strip_prefix(match["module"]), {})[match["factor"]] = key
    if len(adapter_names) > 1:
        raise EdgelalmError(f"{weights_file} holds several adapters ({', '.join(sorted(adapter_names))}); save one")
    return factor_keys, base_layer_copies, shapes


def check_base_layer_copies(
    weights_file: Path,
    base_layer_copies: dict[str, str],
    factor_keys: dict[str, dict[str, str]],
    shapes: dict[str, tuple[int, ...]],
    decoder_shapes: dict[str, tuple[int, ...]],
) -> None:
    """peft saves the frozen base weight of an adapted lm_head (save_embedding_layers). It is not merged
    (the checkpoint's own weight is the base), but it must be one of the adapted layers, with its shape."""
    for trained_path, key in base_layer_copies.items():
        if trained_path not in factor_keys:
            raise EdgelalmError(
                f"{weights_file}: unexpected tensor {key}; edgelalm merges plain LoRA (lora_A / lora_B weights) only"
            )
        weight_name = canonical_module(trained_path, weights_file) + ".weight"
        if shapes[key] != decoder_shapes[weight_name]:
            raise EdgelalmError(
                f"{weights_file}: {key} {shapes[key]} does not fit {weight_name} {decoder_shapes[weight_name]}: "
                "an adapter for another model"
            )


def check_language_model_key(key: str, weights_file: Path) -> None:
    """Refuse adapters touching the audio tower or the projector."""
    for part in NOT_LANGUAGE_MODEL_PARTS:
        if part in key:
            where = "audio tower" if part == "audio_tower" else "audio projector"
            raise EdgelalmError(
                f"{weights_file}: the adapter adapts the {where} ({key}); edgelalm merges LoRA into the language "
                "model only, as the paper adapts only the language model (e.g. q_proj/k_proj of its attention "
                "layers). Train with target_modules limited to it, e.g. r'.*language_model.*\\.(q_proj|k_proj)'"
            )


def describe_unexpected(key: str) -> str:
    if "lora_embedding_" in key:
        return "embedding LoRA (lora_embedding_A/B) is not merged"
    if "lora_magnitude_vector" in key:
        return "DoRA is not merged"
    if ".lora_B." in key and key.endswith(".bias"):
        return "a LoRA bias (lora_bias) is not merged"
    if "modules_to_save" in key or "trainable_tokens" in key:
        return "fully trained modules or tokens are not merged"
    return "edgelalm merges plain LoRA (lora_A / lora_B weights) only"


def strip_prefix(module_key: str) -> str:
    return module_key.removeprefix(PEFT_MODEL_PREFIX)


def canonical_module(trained_path: str, path: Path) -> str:
    """Canonical Qwen2ForCausalLM module path of a module path as trained."""
    for prefix, canonical_prefix in MODULE_PATH_RENAMES:
        if trained_path.startswith(prefix):
            return canonical_prefix + trained_path[len(prefix) :]
    raise EdgelalmError(
        f"{path}: the adapter targets {trained_path}, which is not a linear layer of the language model "
        "(an adapter for another model?)"
    )


def check_factor_shapes(
    weights_file: Path,
    weight_name: str,
    decoder_shapes: dict[str, tuple[int, ...]],
    lora_A: tuple[str, tuple[int, ...]],
    lora_B: tuple[str, tuple[int, ...]],
    rank: int,
) -> None:
    """A is (r, in), B is (out, r) for a base weight (out, in) that is a linear layer of the decoder."""
    weight_shape = decoder_shapes.get(weight_name)
    module = weight_name.removesuffix(".weight")
    if weight_shape is None or len(weight_shape) != 2 or module.endswith("embed_tokens"):
        raise EdgelalmError(
            f"{weights_file}: the adapter targets {module}, which is not a linear layer of the language model "
            "(an adapter for another model?)"
        )
    (A_key, A_shape), (B_key, B_shape) = lora_A, lora_B
    out_features, in_features = weight_shape
    if len(A_shape) != 2 or len(B_shape) != 2 or A_shape[1] != in_features or B_shape[0] != out_features:
        raise EdgelalmError(
            f"{weights_file}: {A_key} {A_shape} and {B_key} {B_shape} do not fit {weight_name} {weight_shape}: "
            "an adapter for another model"
        )
    if A_shape[0] != rank or B_shape[1] != rank:
        raise EdgelalmError(
            f"{weights_file}: rank in {ADAPTER_CONFIG_FILE} ({rank} for {module}) disagrees with the tensor shapes "
            f"({A_key} {A_shape}, {B_key} {B_shape})"
        )
