"""Shared pytest fixtures."""

import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights Qwen2-Audio checkpoint folder with tiny shapes (see edgelalm.scaffold)."""
    from edgelalm.scaffold import tiny_checkpoint as build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2_audio"))


@pytest.fixture(scope="session")
def published_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen/Qwen2-Audio-7B-Instruct's folder as published (bf16 shards + index, release names, minimal
    config.json, no chat template) at tiny widths, with Qwen2's real 151,643-token vocabulary, the
    audio special tokens and 156,032 embedding rows (see tests/published_layout.py)."""
    from published_layout import write_published_checkpoint

    return write_published_checkpoint(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="session")
def qwen2_tokenizer_vectors() -> list[tuple[str, list[int]]]:
    """llama.cpp's own Qwen2 tokenizer test vectors (models/ggml-vocab-qwen2.gguf.inp/.out), (text,
    expected ids), from the sdist of the installed llama-cpp-python: downloaded with pip on first
    use, cached under build/test-data. Fails, never skips, when they cannot be had."""
    from published_layout import llama_cpp_tokenizer_vectors

    try:
        return llama_cpp_tokenizer_vectors()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"llama.cpp's Qwen2 tokenizer test vectors: {error}", pytrace=False)


def random_lora_adapter(checkpoint: Path, out: Path, target_modules: str) -> Path:
    """A peft LoRA adapter folder (rank 16, alpha 32) on `target_modules`, with random non-zero A
    and B: peft initialises B to zero, which would make every merge a no-op and every merge test
    meaningless."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=target_modules))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lora_adapter(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's adapter: q_proj/k_proj of every language-model attention layer."""
    return random_lora_adapter(
        tiny_checkpoint, tmp_path_factory.mktemp("lora_adapter"), r".*language_model.*\.(q_proj|k_proj)"
    )


@pytest.fixture(scope="session")
def tiny_bundles(tiny_checkpoint: Path, tiny_lora_adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """Bundles of the tiny checkpoint with its LoRA merged, exported on first use and shared:
    `tiny_bundles("avg", 3, "f32")`."""
    cache: dict[tuple[str, int, str], Path] = {}

    def bundle(compressor: str = "unseg", factor: int = 1, quant: str = "q8_0") -> Path:
        key = (compressor, factor, quant)
        if key not in cache:
            from edgelalm.compression import CompressorSpec
            from edgelalm.export.bundle import ExportOptions, export_bundle

            out = tmp_path_factory.mktemp("bundles") / f"{compressor}{factor}-{quant}"
            spec = CompressorSpec(compressor, factor)
            export_bundle(ExportOptions(tiny_checkpoint, out, spec, "fp32", quant, tiny_lora_adapter))
            cache[key] = out
        return cache[key]

    return bundle


# finetune's paired clips: transcripts as a user writes them (capitals, digits), normalised by it.
PAIRED_TEXTS = ("set a timer", "call anna", "what time is it", "turn on the lights")


@pytest.fixture(scope="session")
def paired_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TSV of four short speech-like clips and their transcripts ("Set a timer 2." -> "... two")."""
    import soundfile
    from hf_reference import speechlike

    folder = tmp_path_factory.mktemp("paired")
    rows = ["file\ttranscript"]
    for i, text in enumerate(PAIRED_TEXTS):
        soundfile.write(folder / f"clip{i}.wav", speechlike(1.0 + 0.5 * i, seed=10 + i), 16000)
        rows.append(f"clip{i}.wav\t{text.capitalize()} 2.")
    (folder / "pairs.tsv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.tsv"


_HOLDER = (
    "import sys, time; from pathlib import Path; from edgelalm.files import atomic_folder\n"
    "with atomic_folder(Path(sys.argv[1]), force=True) as staging:\n"
    "    print(staging, flush=True); time.sleep(600)\n"
)


@pytest.fixture
def another_writer():
    """`hold(target)` starts a process that writes `target` (holds its staging folder) until
    `stop()`, or the test's end, kills it by SIGKILL; it returns (the staging folder, stop)."""
    import sys

    processes: list[subprocess.Popen[str]] = []

    def stop(process: subprocess.Popen[str]) -> None:
        process.kill()
        process.wait(timeout=60)

    def hold(target: Path) -> tuple[Path, object]:
        process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout is not None
        return Path(process.stdout.readline().strip()), lambda: stop(process)

    yield hold
    for process in processes:
        stop(process)


@pytest.fixture
def unprivileged():
    """A command as a user whom file permissions bind: root reads and writes any file, so its right
    to is dropped (setpriv), where the tests run as root."""
    import os
    import shutil

    def command(*arguments: str) -> list[str]:
        if os.geteuid() != 0:
            return list(arguments)
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop its right to read any file")
        drop = "-dac_override,-dac_read_search"
        return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *arguments]

    return command
