"""WER of a checkpoint in PyTorch on the encoded datasets' kept audio (make_encoded_data.py), by
set, synthesizer and kind: the progress check between training stages (the shipped numbers come
from the exported bundles, wer_table.py).

    python recipes/default_model/wer_check.py build/default-model/base3/last --data data3 --count 120

The audio goes through the checkpoint's whole tower (not the stored frames), as at run time. For
"silence" clips the measure is the share answered with nothing. `--long N` adds N clips of 25-29 s
per set, consecutive speech clips of the set joined with 0.3 s of silence (the issue's
multi-sentence 30 s clips; one encoder window each). `--ctc-head` (a TokenCtc's, beside a stage's
checkpoint) adds its best path's WER per group, from the stored frames: how much of the speech the
projected audio carries, whatever the decoder makes of it. `--tsv` adds a set of clips with
`file` and `transcript` columns (real_speech.py's real human voices), its audio through the tower.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.evaluate import score, transcribe_torch
from edgelalm.training.finetune import PairedAudio
from edgelalm.training.model import PromptIds, encode_batch, log_mel_batch
from edgelalm.training.train import TokenCtc, projected_frames


def check_tsv(model, processor, prompt: PromptIds, ctc: TokenCtc | None, manifest: Path) -> dict[str, str]:
    """The decoder's WER on a TSV set's clips and, with a CTC head, its best path's: the audio
    through the whole tower here, as there are no stored frames."""
    paired = PairedAudio(manifest, processor.feature_extractor.sampling_rate, normalize=True)
    clips = [paired[i][0] for i in range(len(paired))]
    hypotheses, _ = transcribe_torch(model, processor, prompt, nn.Identity(), clips)
    rows = {"speech": f"{100 * score(paired.texts, hypotheses, 0, 1.0).wer:.1f}% WER ({len(clips)} clips)"}
    if ctc is not None:
        paths = []
        with torch.no_grad():
            for clip in clips:
                mel, lengths = log_mel_batch([clip], processor.feature_extractor)
                encoded = encode_batch(model.model.audio_tower, mel, lengths)
                frames = encoded.frames[0, : encoded.frame_counts[0]].numpy()
                paths.append(ctc.greedy(projected_frames(model, nn.Identity(), [[frames]])[0]))
        rows["speech"] += f", CTC best path {100 * score(paired.texts, paths, 0, 1.0).wer:.1f}%"
    return rows


def long_clips(data: EncodedDataset, count: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` clips of 25-29 s: the set's speech clips in order, joined with 0.3 s of silence."""
    gap = np.zeros(int(0.3 * data.sampling_rate), dtype=np.float32)
    clips, references, parts, words = [], [], [], []
    for index in range(len(data)):
        if data.records[index]["kind"] == "silence":
            continue
        audio = data.audio(index)
        if sum(len(p) for p in parts) + len(audio) > 29 * data.sampling_rate:
            parts, words = [], []  # would overflow the window: start again
        parts += [audio, gap]
        words.append(data.texts[index])
        if sum(len(p) for p in parts) >= 25 * data.sampling_rate:
            clips.append(np.concatenate(parts))
            references.append(" ".join(words))
            parts, words = [], []
            if len(clips) == count:
                break
    return clips, references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data3"))
    parser.add_argument("--sets", default="test,unheard")
    parser.add_argument("--count", type=int, default=120, help="clips per set (the first ones)")
    parser.add_argument("--show", type=int, default=4, help="examples of errors to print per set")
    parser.add_argument("--long", type=int, default=0, help="also N joined clips of 25-29 s per set")
    parser.add_argument("--ctc-head", type=Path, default=None, help="a TokenCtc head: its best path's WER too")
    parser.add_argument("--tsv", type=Path, action="append", default=[], help="a set of file/transcript clips too")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    processor = Qwen2AudioProcessor.from_pretrained(args.checkpoint)
    prompt = PromptIds.for_checkpoint(processor, args.checkpoint)
    ctc = None
    if args.ctc_head:
        ctc = TokenCtc(model.get_input_embeddings(), processor.tokenizer)
        ctc.load_head(args.ctc_head)
    report = {}
    for name in filter(None, args.sets.split(",")):
        data = EncodedDataset(args.data / name)
        indices = range(min(args.count, len(data)))
        hypotheses, _ = transcribe_torch(model, processor, prompt, nn.Identity(), (data.audio(i) for i in indices))
        groups: dict[str, list[int]] = defaultdict(list)
        for i in indices:
            record = data.records[i]
            groups[f"kind {record['kind']}"].append(i)
            if record["kind"] != "silence":
                groups[f"engine {record['voice'].split(':')[0]}"].append(i)
                groups["speech"].append(i)
        best_paths = {}  # each clip's once: it is in several groups
        if ctc is not None:
            with torch.no_grad():
                for i in indices:
                    best_paths[i] = ctc.greedy(
                        projected_frames(model, nn.Identity(), [[data[i][0]]], data.below_layer)[0]
                    )
        rows = {}
        for group, members in sorted(groups.items()):
            if group == "kind silence":
                empty = sum(1 for i in members if not hypotheses[i].strip())
                rows[group] = f"{empty}/{len(members)} empty"
                continue
            result = score([data.texts[i] for i in members], [hypotheses[i] for i in members], 0, 1.0)
            rows[group] = f"{100 * result.wer:.1f}% WER ({len(members)} clips)"
            if ctc is not None:
                paths = [best_paths[i] for i in members]
                rows[group] += (
                    f", CTC best path {100 * score([data.texts[i] for i in members], paths, 0, 1.0).wer:.1f}%"
                )
        if args.long:
            clips, references = long_clips(data, args.long)
            answers, _ = transcribe_torch(model, processor, prompt, nn.Identity(), clips, max_new_tokens=256)
            result = score(references, answers, 0, 1.0)
            rows["long 25-29 s"] = f"{100 * result.wer:.1f}% WER ({len(clips)} clips)"
            print(f"  long: {references[0]!r} -> {answers[0]!r}", file=sys.stderr)
        report[name] = rows
        print(f"{name}: " + json.dumps(rows, indent=1), file=sys.stderr)
        shown = 0
        for i in indices:
            if hypotheses[i] != data.texts[i] and shown < args.show:
                print(f"  {data.records[i]['voice']}: {data.texts[i]!r} -> {hypotheses[i]!r}", file=sys.stderr)
                shown += 1
    for manifest in args.tsv:
        report[manifest.parent.name] = check_tsv(model, processor, prompt, ctc, manifest)
        print(f"{manifest.parent.name}: " + json.dumps(report[manifest.parent.name], indent=1), file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
