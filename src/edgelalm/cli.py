"""The `edgelalm` command line. A thin layer: each command parses options and calls one function.

Errors the user can fix arrive as EdgelalmError and leave as one line on stderr with a
non-zero exit code; usage errors too. torch is imported only by the commands that export.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException

from edgelalm.compression import COMPRESSOR_DESCRIPTIONS, FACTOR_COMPRESSORS, CompressorSpec
from edgelalm.errors import EdgelalmError

DEFAULT_EXPORT_ROOT = Path("export")

app = typer.Typer(
    name="edgelalm",
    help="Compressed audio language models (Qwen2-Audio and kin) on edge devices.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Compressor = enum.Enum("Compressor", {name: name for name in COMPRESSOR_DESCRIPTIONS}, type=str)
Precision = enum.Enum("Precision", {name: name for name in ("fp32", "fp16", "int8")}, type=str)
Device = enum.Enum("Device", {name: name for name in ("cpu", "cuda")}, type=str)
# Mirrors edgelalm.export.decoder.QUANT_TYPES (not imported here: it pulls in torch).
Quant = enum.Enum("Quant", {name: name for name in ("f32", "f16", "q8_0", "q4_k_m", "q4_0")}, type=str)

_COMPRESSOR_HELP = "Compressor between the audio encoder and the projector: " + "; ".join(
    f"{name} = {text}" for name, text in COMPRESSOR_DESCRIPTIONS.items()
)


@app.command()
def export(
    model: Annotated[
        Optional[Path],
        typer.Option(help="Qwen2-Audio checkpoint folder (config.json, *.safetensors, tokenizer, processor)."),
    ] = None,
    compressor: Annotated[Compressor, typer.Option(help=_COMPRESSOR_HELP)] = Compressor.avg,
    factor: Annotated[
        Optional[int],
        typer.Option(help=f"Compression factor K for {' and '.join(FACTOR_COMPRESSORS)} (integer >= 1; default 2)."),
    ] = None,
    encoder_precision: Annotated[
        Precision,
        typer.Option(
            help="Encoder weights: fp32; fp16 (half the size, GPU-friendly); int8 (dynamic quantization of MatMuls). "
            "The measured difference against fp32 is printed."
        ),
    ] = Precision.fp32,
    quant: Annotated[
        Quant,
        typer.Option(
            help="Decoder GGUF type: f32, f16, or llama.cpp's quantizations q8_0 (8-bit), q4_k_m (4-bit K-quant, "
            "mixed), q4_0 (4-bit). Norms and biases stay f32."
        ),
    ] = Quant.q8_0,
    adapter: Annotated[
        Optional[Path],
        typer.Option(
            help="peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors) on the language model, "
            "merged into the decoder before export (W' = W + alpha/r * B @ A)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(help="Bundle folder to write. Default: export/<model>-<compressor><K>-<quant>."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Export a Qwen2-Audio checkpoint as one bundle folder: the audio encoder and the compressor +
    projector as ONNX (onnxruntime), the decoder with any LoRA merged as GGUF (llama.cpp), and a
    manifest with every file's checksum."""
    if model is None:
        raise EdgelalmError("no --model given: name a Qwen2-Audio checkpoint folder (edgelalm scaffold makes one)")
    if factor is None:
        factor = 2 if compressor.value in FACTOR_COMPRESSORS else 1
    spec = CompressorSpec(compressor.value, factor)
    if out is None:
        encoder_suffix = "" if encoder_precision.value == "fp32" else f"-encoder-{encoder_precision.value}"
        out = DEFAULT_EXPORT_ROOT / f"{model.resolve().name}-{spec.label}-{quant.value}{encoder_suffix}"

    from edgelalm.export.bundle import ExportOptions, export_bundle

    options = ExportOptions(model, out, spec, encoder_precision.value, quant.value, adapter, force)
    written = export_bundle(options)
    typer.echo(str(written))


@app.command()
def run(
    audio: Annotated[Path, typer.Argument(help="Audio file: wav, flac, ogg (any sample rate, any channel count).")],
    bundle: Annotated[
        Optional[Path],
        typer.Option(help="Bundle folder. Default: the most recently written bundle under ./export/."),
    ] = None,
    prompt: Annotated[
        Optional[str], typer.Option(help="What to ask about the audio. Default: the bundle's transcription prompt.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default); above 0 samples with llama.cpp.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold when --temperature > 0.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads. Default: onnxruntime's and llama.cpp's own.")] = None,
    device: Annotated[
        Device, typer.Option(help="cpu, or cuda (onnxruntime's CUDA provider and llama.cpp GPU offload).")
    ] = Device.cpu,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="After the answer, print one JSON line: text, token counts, timings, memory."),
    ] = False,
) -> None:
    """Answer a prompt about an audio clip (default: transcribe it) with a bundle, streaming the answer."""
    import json

    from edgelalm.runtime.pipeline import Runtime, latest_bundle

    with Runtime(bundle or latest_bundle(DEFAULT_EXPORT_ROOT), threads=threads, device=device.value) as runtime:
        result = runtime.run(
            audio,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            on_text=lambda piece: print(piece, end="", flush=True),
        )
    print(flush=True)
    if json_output:
        print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)


@app.command()
def inspect(bundle: Annotated[Path, typer.Argument(help="Bundle folder written by edgelalm export.")]) -> None:
    """Print a bundle's manifest readably and verify every file's checksum."""
    from edgelalm.manifest import read_manifest

    manifest = read_manifest(bundle)
    model, compressor, encoder = manifest["model"], manifest["compressor"], manifest["encoder"]
    rate = compressor["audio_tokens_per_second"]
    lines = [
        f"bundle        {bundle}  (format {manifest['format_version']}, written {manifest['created_utc']})",
        f"model         {model['name']}  audio width {model['audio_width']}, LLM hidden {model['hidden_size']}, vocab {model['vocab_size']}",
        f"features      {manifest['features']['num_mel_bins']} mel bins at {manifest['features']['sampling_rate']} Hz, "
        f"window {manifest['features']['window_seconds']} s",
        f"encoder       {encoder['file']}  {encoder['precision']}, probe max |diff| vs fp32 {encoder['probe']['max_abs_diff_vs_pytorch_fp32']:.2e}",
        f"compressor    {compressor['file']}  {compressor['name']} K={compressor['factor']}: "
        + (f"{rate:.2f} audio tokens/s" if rate else "rate depends on the audio"),
        f"decoder       {describe_decoder(manifest['decoder'])}",
        "files (checksums verified):",
        *(f"  {name:28s} {record['bytes'] / 1e6:10.2f} MB" for name, record in manifest["files"].items()),
    ]
    typer.echo("\n".join(lines))


def describe_decoder(decoder: dict | None) -> str:
    if not decoder:
        return "none"
    adapter = decoder.get("adapter")
    merged = f", LoRA merged (rank {adapter['rank']}, alpha {adapter['alpha']:g})" if adapter else ", no LoRA"
    return (
        f"{decoder['file']}  {decoder['architecture']} {decoder['quant']}, {decoder['layers']} layers, "
        f"hidden {decoder['hidden_size']}, context {decoder['context_length']}{merged}"
    )


class ScaffoldPreset(str, enum.Enum):
    tiny = "tiny"


@app.command()
def scaffold(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to create.")],
    preset: Annotated[ScaffoldPreset, typer.Option(help="Shapes: tiny = 2+2 layers of width 64, 10 s window.")] = ScaffoldPreset.tiny,
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a Qwen2-Audio checkpoint with random weights (for trying the pipeline, tests, benchmarks)."""
    if out.exists():
        raise EdgelalmError(f"{out} already exists")
    from edgelalm.scaffold import tiny_checkpoint

    typer.echo(str(tiny_checkpoint(out, seed=seed)))


def main() -> None:
    """Console entry point: every failure the user can act on is one line on stderr."""
    try:
        app(standalone_mode=False)
    except EdgelalmError as error:
        _fail(str(error), 1)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except TyperException as error:  # usage errors: unknown option, bad value
        _fail(getattr(error, "format_message", error.__str__)(), 2)


def _fail(message: str, exit_code: int) -> None:
    print(f"edgelalm: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
