"""Tried: greedy decoding with the decoder's text-only prior divided out (contrastive decoding).

    python recipes/default_model/prior_decoding.py build/default-model/base14avg/final --count 60 \
        --weights 0,0.3,0.6,1.0 --tsv build/real-speech/transcripts.tsv > results/prior-decoding/wer.json

The default model's decoder follows its own text prior over the audio ("Where it stands"). Each
step picks argmax log p(y | audio, answer so far) - weight * log p(y | answer so far), the second
from the same prompt with no audio between <|audio_bos|> and <|audio_eos|>, over the tokens whose
probability with the audio is at least `--plausible` times the best one's (Li et al.'s adaptive
plausibility, so the prior cannot promote a token the audio rules out). Weight 0 is plain greedy
decoding. WER (%) per set on its first `--count` clips, PyTorch, `none`; free words and the other
kinds apart; silence clips as the share answered with nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from edgelalm.training.encoded import EncodedDataset
from edgelalm.training.evaluate import MAX_ANSWER_TOKENS, score
from edgelalm.training.finetune import PairedAudio
from edgelalm.training.model import PromptIds, compress_and_project, encode_batch, log_mel_batch


class PriorDividedDecoder:
    def __init__(self, checkpoint: Path) -> None:
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.processor = Qwen2AudioProcessor.from_pretrained(checkpoint)
        self.prompt = PromptIds.from_processor(self.processor)
        tokenizer = self.processor.tokenizer
        self.end_ids = {self.prompt.end_of_answer, tokenizer.convert_tokens_to_ids("<|endoftext|>")}

    def audio_embeddings(self, clip: np.ndarray) -> torch.Tensor:
        mel, lengths = log_mel_batch([clip], self.processor.feature_extractor)
        return compress_and_project(
            self.model, nn.Identity(), encode_batch(self.model.model.audio_tower, mel, lengths)
        )[0]

    def _next(self, embeddings: torch.Tensor, cache=None) -> tuple[object, torch.Tensor]:
        """Run `embeddings` [N, H] after `cache`; the cache and the last position's log-probabilities."""
        out = self.model.model.language_model(inputs_embeds=embeddings[None], past_key_values=cache, use_cache=True)
        return out.past_key_values, torch.log_softmax(self.model.lm_head(out.last_hidden_state[0, -1]), -1)

    def answer(self, audio: torch.Tensor, weight: float, plausible: float) -> str:
        embed = self.model.get_input_embeddings()
        before = embed(torch.tensor(self.prompt.before_audio))
        after = embed(torch.tensor(self.prompt.after_audio))
        with_audio, scores = self._next(torch.cat([before, audio, after]))
        if weight:
            without_audio, prior = self._next(torch.cat([before, after]))
        tokens: list[int] = []
        for _ in range(MAX_ANSWER_TOKENS):
            if weight:
                allowed = scores >= scores.max() + math.log(plausible)
                token = int(torch.where(allowed, scores - weight * prior, -math.inf).argmax())
            else:
                token = int(scores.argmax())
            if token in self.end_ids:
                break
            tokens.append(token)
            following = embed(torch.tensor([token]))
            with_audio, scores = self._next(following, with_audio)
            if weight:
                without_audio, prior = self._next(following, without_audio)
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)


def _wer(references: list[str], hypotheses: list[str], members: list[int]) -> float:
    return round(100 * score([references[i] for i in members], [hypotheses[i] for i in members], 0, 1.0).wer, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data3"))
    parser.add_argument("--sets", default="test,unheard")
    parser.add_argument("--tsv", type=Path, action="append", default=[], help="a set of file/transcript clips too")
    parser.add_argument("--count", type=int, default=60, help="clips per set (the first ones)")
    parser.add_argument("--weights", default="0,0.3,0.6,1.0", help="the prior's weights to try (0: greedy)")
    parser.add_argument("--plausible", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    decoder = PriorDividedDecoder(args.checkpoint)
    sets: dict[str, tuple[list[np.ndarray], list[str], list[str]]] = {}
    for name in filter(None, args.sets.split(",")):
        data = EncodedDataset(args.data / name)
        indices = range(min(args.count, len(data)))
        sets[name] = (
            [data.audio(i) for i in indices],
            [data.texts[i] for i in indices],
            [data.records[i]["kind"] for i in indices],
        )
    for manifest in args.tsv:
        paired = PairedAudio(manifest, decoder.processor.feature_extractor.sampling_rate, normalize=True)
        count = min(args.count, len(paired))
        sets[manifest.parent.name] = ([paired[i][0] for i in range(count)], paired.texts[:count], ["speech"] * count)
    report: dict[str, dict[str, object]] = {}
    with torch.no_grad():
        for name, (clips, references, kinds) in sets.items():
            audio = [decoder.audio_embeddings(clip) for clip in clips]
            speech = [i for i, kind in enumerate(kinds) if kind != "silence"]
            silence = [i for i, kind in enumerate(kinds) if kind == "silence"]
            for weight in (float(w) for w in args.weights.split(",")):
                hypotheses = [decoder.answer(a, weight, args.plausible) for a in audio]
                row: dict[str, object] = {"speech": _wer(references, hypotheses, speech)}
                if "words" in kinds:
                    row["free words"] = _wer(references, hypotheses, [i for i in speech if kinds[i] == "words"])
                    row["other kinds"] = _wer(references, hypotheses, [i for i in speech if kinds[i] != "words"])
                if silence:
                    row["silence answered with nothing"] = (
                        f"{sum(not hypotheses[i].strip() for i in silence)}/{len(silence)}"
                    )
                report[f"{name}, weight {weight}"] = row
                print(f"{name}, weight {weight}: {row}", file=sys.stderr)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
