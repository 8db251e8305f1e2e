"""`Runtime`: load a bundle once, then turn clips into answers.

audio file -> 16 kHz mono -> windows -> log-mel (numpy) -> encoder.onnx -> compressor.onnx
-> llama.cpp: prompt tokens, audio embeddings (batch.embd), prompt tokens -> sampled text.
Torch-free: onnxruntime, llama.cpp and numpy only.

A bundle of several compressors (format version 2) holds one graph per compressor and each one's
LoRA as a llama.cpp adapter: a run picks one (or `auto`: the least compression that fits), and its
context applies that adapter over the one loaded decoder.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgelalm.checks import check_choice, check_unicode_text, is_finite_number, is_real_number, is_whole_number
from edgelalm.compression import CompressorSpec
from edgelalm.constants import (
    DEVICES,
    ENCODER_FRAMES_PER_SECOND,
    EXTRA_BUFFER_CHOICES,
    MANIFEST_FILE,
    WINDOW_MODES,
    WindowMode,
)
from edgelalm.errors import EdgelalmError
from edgelalm.manifest import MAX_BEAM_SIZE, Manifest, read_manifest
from edgelalm.runtime.audio import (
    header_warning,
    loudness_warning,
    open_audio,
    prepare_samples,
    samples_in_memory,
    stream_audio,
)
from edgelalm.runtime.compressor import CompressorProjector
from edgelalm.runtime.ctc import CtcHead, CtcPrefixScorer
from edgelalm.runtime.decoder import LlamaAdapter, LlamaContext, LlamaModel
from edgelalm.runtime.encoder import AudioEncoder
from edgelalm.runtime.features import (
    FeatureSettings,
    encoder_output_frames,
    load_mel_filters,
    log_mel_window,
    mel_frames_for,
    speech_span,
    split_windows,
    stream_windows,
    usable_window,
    window_lengths,
)
from edgelalm.runtime.llama_backend import ExtraBuffers, check_threads
from edgelalm.runtime.memory import peak_rss_mb
from edgelalm.runtime.search import beam_search
from edgelalm.runtime.subtitles import TimedText


@dataclass
class RunResult:
    text: str
    audio_seconds: float
    audio_tokens: int
    audio_tokens_per_second: float
    windows: int
    prompt_tokens: int
    generated_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    decode_tokens_per_second: float = 0.0
    peak_rss_mb: float = 0.0
    context_tokens: int = 0
    # Prompt tokens before the audio kept in the KV cache from the previous run (the prefix cache).
    reused_prompt_tokens: int = 0
    # What the caller should know about the input (a truncated file); the CLI prints them on stderr.
    warnings: list[str] = field(default_factory=list)
    # The compressor that ran (its label: avg3, unseg), and with `auto`, why it was chosen.
    compressor: str = ""
    compressor_choice: str = ""
    # "joined": one prompt held every window's audio; "each": every window was answered on its own
    # (prompt_tokens count the prompt once a window, and each window's first token is prefill's).
    window_mode: WindowMode = "joined"
    # How the answer's tokens were picked: "greedy", "beam search of 4, CTC weight 0.3", "sampled (...)".
    decoding: str = "greedy"
    # Each answer with the audio it answers: a window's with "each" (empty where it heard nothing),
    # the whole clip's with "joined". What `run --subtitles` writes.
    timed_text: list[TimedText] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_T = TypeVar("_T")

# `Runtime.run(compressor=AUTO)`: the least compression whose audio tokens fit.
AUTO = "auto"


@dataclass(frozen=True)
class Decoding:
    """How one run picks its answer's tokens: llama.cpp's sampler (greedy at temperature 0), or a
    beam search, joint with the bundle's CTC head where `ctc_weight` > 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    beam_size: int = 1
    ctc_weight: float = 0.0

    @property
    def searches(self) -> bool:
        return self.beam_size > 1 or self.ctc_weight > 0

    def describe(self) -> str:
        if self.temperature > 0:
            return f"sampled (temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed})"
        if not self.searches:
            return "greedy"
        joint = f", CTC weight {self.ctc_weight:g}" if self.ctc_weight > 0 else ""
        return f"beam search of {self.beam_size}{joint}"


@dataclass(frozen=True)
class CompressorOption:
    """A compressor the loaded bundle offers: its spec, its graph and its adapter (None: none)."""

    spec: CompressorSpec
    graph: CompressorProjector
    adapter: LlamaAdapter | None
    ctc: CtcHead | None = None  # the CTC head joint decoding scores with (its own, or the bundle's)

    @property
    def ctc_reads_frames(self) -> bool:
        """Whether its CTC head reads the encoder's frames (else this compressor's embeddings)."""
        return self.ctc is not None and self.ctc.reads_frames


@dataclass
class _Tally:
    """What a run counted on its way: audio samples read, tokens, windows, decode time."""

    samples: int = 0
    audio_tokens: int = 0
    windows: int = 0
    prompt_tokens: int = 0
    generated: int = 0
    reused_tokens: int = 0
    decode_seconds: float = 0.0
    first_token_at: float | None = None
    timed_text: list[TimedText] = field(default_factory=list)


@dataclass
class _JoinedAudio:
    """A clip read as one audio span (`Runtime._read_joined`)."""

    embeddings: dict[str, list[np.ndarray]]  # each candidate still within the budget: its windows' embeddings
    tokens: dict[str, int]  # each candidate's audio tokens (over the budget for one dropped)
    frames: list[np.ndarray] = field(default_factory=list)  # the encoder's, where a CTC head reads them
    samples: int = 0  # read from the clip
    windows: int = 0  # encoded (a window too short for the encoder is not)
    speech: tuple[int, int] | None = None  # the clip's speech span in samples, where it has one


def latest_bundle(root: Path) -> Path:
    """The most recently written bundle folder under `root` (by its manifest's time)."""
    # Not the hidden staging folders of an export still running (or killed): `.name.partial-*`.
    manifests = sorted(
        (path for path in root.glob(f"*/{MANIFEST_FILE}") if not path.parent.name.startswith(".")),
        key=lambda path: path.stat().st_mtime,
    )
    if not manifests:
        raise EdgelalmError(f"no bundle under {root}/: run `edgelalm export` first, or pass --bundle")
    return manifests[-1].parent


class Runtime:
    """A bundle, loaded: `Runtime(bundle).run("clip.wav", prompt="...")`."""

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        threads: int | None = None,
        device: str = "cpu",
        kv_cache_type: str = "f16",
        cpu_arena: bool = False,
        llama_extra_buffers: ExtraBuffers = "auto",
        max_concurrent_runs: int = 2,
        prefix_cache: bool = True,
    ) -> None:
        """`llama_extra_buffers`: whether llama.cpp may put weights in its extra buffer types
        (repack, AMX); "auto" keeps them except where llama.cpp's AMX buffer would crash.
        `max_concurrent_runs`: how many threads may run at once, each with a llama.cpp context
        (its own KV cache) on the one loaded model; more callers wait for a free context.
        `prefix_cache`: keep the prompt's text before the audio (the same for every clip) in each
        context's KV cache, so a run evaluates only the audio and the text after it."""
        if not isinstance(bundle, (str, os.PathLike)):
            raise EdgelalmError(f"bundle must be a folder's path, got {type(bundle).__name__}")
        _check_whole_number("max_concurrent_runs", max_concurrent_runs, 1)
        check_choice("llama_extra_buffers", llama_extra_buffers, EXTRA_BUFFER_CHOICES)
        _check_flag("prefix_cache", prefix_cache)
        _check_flag("cpu_arena", cpu_arena)
        self.bundle = _real_folder(Path(bundle))
        loading = _bundle_identity(self.bundle)
        # Runs in flight, so that close() waits for them; after close() or in a forked child, runs
        # are refused (llama.cpp's freed memory, or threads that did not survive the fork).
        self._lifecycle = threading.Condition()
        self._active_runs = 0
        self._closed = False
        self._process_id = os.getpid()
        self._inside_run = threading.local()
        # A llama.cpp context (KV cache) is one sequence: two runs in one would corrupt it (a
        # segfault). Each run takes an idle context, or makes one while fewer than
        # max_concurrent_runs exist, or waits for one; the weights are loaded once and shared.
        self.max_concurrent_runs = max_concurrent_runs
        self.prefix_cache = prefix_cache
        self._contexts: list[LlamaContext] = []
        # Which run holds each context, and when each was last given back (the latest is taken
        # first: its prefix cache is warm). A run's token is stored in one step, so a Ctrl-C
        # anywhere in the taking leaves the context either taken and given back, or never taken.
        self._holders: dict[LlamaContext, object] = {}
        self._given_back: dict[LlamaContext, int] = {}
        self._give_back_count = itertools.count(1)
        self._contexts_changed = threading.Condition()
        # One count for onnxruntime and llama.cpp: the cores this process may use (llama.cpp's own
        # default of 4 oversubscribed 2 cores; onnxruntime's counts the host's, not the container's).
        threads = check_threads(threads)
        self.manifest = manifest = read_manifest(self.bundle)
        if manifest.decoder is None:
            raise EdgelalmError(f"bundle {self.bundle} has no decoder; re-export it with this edgelalm")
        providers, gpu_layers = device_settings(device)
        features = manifest.features
        self.features = FeatureSettings(
            sampling_rate=features.sampling_rate,
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            window_samples=features.window_mel_frames * features.hop_length,
            mel_filters=load_mel_filters(
                self.bundle / features.mel_filters_file, features.n_fft, features.num_mel_bins
            ),
        )
        self.compressor_spec = manifest.compressor.spec
        self.encoder = AudioEncoder(self.bundle / manifest.encoder.file, providers, threads, cpu_arena)
        self.decoder_info = manifest.decoder
        self.context_limit = manifest.decoder.context_length
        self.decoder = LlamaModel(
            self.bundle / manifest.decoder.file,
            n_threads=threads,
            n_gpu_layers=gpu_layers,
            kv_cache_type=kv_cache_type,
            extra_buffers=llama_extra_buffers,
            expected=manifest.decoder,
        )
        # Frees llama.cpp's memory once: at close(), on a failure below, or when the Runtime is
        # dropped unclosed (a server making runtimes would otherwise keep every model mapped).
        self._finalizer = weakref.finalize(self, _free_llama, self._contexts, self.decoder, os.getpid())
        self._finalizer.atexit = False  # at exit the process's memory goes anyway
        try:
            _check_vocabulary(self.decoder, manifest)
            self._load_rest(manifest, providers, threads, cpu_arena)
            if _bundle_identity(self.bundle) != loading:
                raise EdgelalmError(
                    f"bundle {self.bundle} was replaced while it was loading (by another export?): "
                    "its parts may be of two bundles; load it again"
                )
        except BaseException:
            self._finalizer()
            raise

    def _load_rest(self, manifest: Manifest, providers: list[str], threads: int, cpu_arena: bool) -> None:
        """What the constructor loads once the decoder is: compressors, adapters, the first context."""
        # {label: option}: the bundle's compressors, the default first. Each graph is small; each
        # adapter is loaded once onto the shared weights (a few MB) and applied per context.
        entries = [(label, choice.compressor, choice.adapter) for label, choice in manifest.compressors.items()]
        self.compressors: dict[str, CompressorOption] = {}
        # The CTC heads for joint decoding, where the checkpoint or the adapters had them: a choice's
        # own (realigned to it), else the bundle's.
        heads = {
            info.file: CtcHead(
                self.bundle / info.file, info.vocab_size, providers, threads, cpu_arena, reads_frames=info.reads_frames
            )
            for _, info in manifest.ctc_heads()
        }
        for label, info, adapter in entries or [(self.compressor_spec.label, manifest.compressor, None)]:
            head = manifest.ctc_head_for(label)
            self.compressors[label] = CompressorOption(
                info.spec,
                CompressorProjector(self.bundle / info.file, info.spec, providers, threads, cpu_arena),
                self.decoder.load_adapter(self.bundle / adapter.file, adapter.gguf_alpha) if adapter else None,
                heads[head.file] if head else None,
            )
        self._new_context()  # the first, made now: a failure shows at load
        self.prompt = manifest.prompt
        self.before_audio = self.decoder.tokenize(self.prompt.before_audio)
        # The bundle's own text must leave room for audio and an answer: a run would otherwise
        # blame the caller's clip or prompt for what the manifest wrote.
        own_text_tokens = len(self.before_audio) + len(self.prompt_tokens_after_audio(self.prompt.default_prompt))
        if own_text_tokens + 2 > self.context_limit:
            raise EdgelalmError(
                f"{self.bundle / MANIFEST_FILE}: its prompt (before_audio, default_prompt) takes {own_text_tokens} "
                f"tokens, which leaves no room for audio in the decoder's context of {self.context_limit}"
            )
        # The checkpoint's own stop tokens, beside the ones llama.cpp reads from the GGUF.
        self.stop_ids = frozenset(manifest.special_tokens.end_of_turn_ids)
        self._end_of_answer_ids: frozenset[int] | None = None
        # Measurements (bench, doctor's canary) set it False: greedy and sampled answers then run to
        # max_tokens past the end of the answer, so that a decode rate is measured (a trained model
        # ends its answer to a synthetic clip at once: 0 tokens, 0.0 tokens/s). Not for answers.
        self.stop_at_end_of_answer = True

    def close(self) -> None:
        """Free the decoder's weights and contexts once the runs in flight have ended; later runs
        are refused. Closing twice is harmless."""
        if getattr(self._inside_run, "active", False):
            raise EdgelalmError("Runtime.close() was called from inside one of its own runs (on_text, on_timed_text)")
        with self._lifecycle:
            self._closed = True
            self._lifecycle.wait_for(lambda: self._active_runs == 0)
        self._finalizer()

    @contextlib.contextmanager
    def _run_slot(self) -> Iterator[LlamaContext]:
        """One run in flight, with the llama.cpp context it runs in: refused on a closed Runtime, in
        a forked child, or from inside a run. A run that raises leaves its context trusting
        nothing it recorded (`LlamaContext.forget`): a Ctrl-C can land between a native call and
        the line that records what it did (a notebook's interrupted cell, then the next)."""
        if getattr(self._inside_run, "active", False):
            raise EdgelalmError(
                "Runtime.run() was called from inside one of its own runs (on_text, on_timed_text): it would wait "
                "for ever "
                "for a context; call it after the run returns"
            )
        if os.getpid() != self._process_id:
            raise EdgelalmError(
                "this Runtime was made before os.fork(): llama.cpp's and onnxruntime's threads do not survive "
                "a fork; make the Runtime in the process that runs it"
            )
        run_token, counted = object(), False
        try:
            with self._lifecycle:
                if self._closed:
                    raise EdgelalmError("this Runtime is closed")
                self._active_runs, counted = self._active_runs + 1, True
            self._inside_run.active = True
            context = self._take_context(run_token)
            try:
                yield context
            except BaseException:
                context.forget()
                raise
        finally:
            self._inside_run.active = False
            self._give_back(run_token)
            if counted:
                with self._lifecycle:
                    self._active_runs -= 1
                    self._lifecycle.notify_all()

    @property
    def contexts_made(self) -> int:
        """llama.cpp contexts made so far (at most max_concurrent_runs)."""
        return len(self._contexts)

    def _new_context(self) -> LlamaContext:
        context = LlamaContext(self.decoder, 256)
        self._contexts.append(context)
        return context

    def _take_context(self, run_token: object) -> LlamaContext:
        """An idle context (the last given back), or a new one while fewer than
        max_concurrent_runs exist, or the first to be given back; held by `run_token`."""
        with self._contexts_changed:
            while True:
                idle = [context for context in self._contexts if context not in self._holders]
                if idle:
                    context = max(idle, key=lambda context: self._given_back.get(context, 0))
                elif len(self._contexts) < self.max_concurrent_runs:
                    context = self._new_context()
                else:
                    self._contexts_changed.wait()
                    continue
                self._holders[context] = run_token
                return context

    def _give_back(self, run_token: object) -> None:
        with self._contexts_changed:
            for context, holder in list(self._holders.items()):
                if holder is run_token:
                    self._given_back[context] = next(self._give_back_count)
                    del self._holders[context]
            self._contexts_changed.notify()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt_tokens_after_audio(self, prompt: str, prompt_special_tokens: bool = False) -> list[int]:
        """The template's text after the audio, the prompt, the template's text after the prompt.
        The prompt is the caller's text: `<|im_end|>` in it stays text unless `prompt_special_tokens`,
        so a prompt cannot close the user's turn and write the assistant's. (The pieces meet at a
        newline and at special tokens, where the tokenizer splits anyway: the default prompt's ids
        equal the whole string's, which training uses.)"""
        return (
            self.decoder.tokenize(self.prompt.after_audio)
            + self.decoder.tokenize(prompt, parse_special=prompt_special_tokens)
            + self.decoder.tokenize(self.prompt.after_prompt)
        )

    def run(
        self,
        audio: Path | str | np.ndarray | Sequence[float],
        prompt: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        sampling_rate: int | None = None,
        on_text: Callable[[str], None] | None = None,
        on_timed_text: Callable[[TimedText], None] | None = None,
        prompt_special_tokens: bool = False,
        compressor: str | None = None,
        max_audio_tokens: int | None = None,
        windows: WindowMode | None = None,
        window_seconds: float | None = None,
        beam_size: int | None = None,
        ctc_weight: float | None = None,
    ) -> RunResult:
        """Answer a prompt about one clip. Safe to call from several threads: up to
        `max_concurrent_runs` run at once, each in its own llama.cpp context; others wait.

        Args:
            audio: a file path (wav, flac, ogg, mp3: whatever libsndfile reads, any rate and channel
                count) or samples, [frames] or [frames, channels]: float in [-1, 1] (an array or a
                list), or an integer PCM array (int16, int32, uint8), scaled as libsndfile scales a
                file's.
            prompt: what to ask; None: the bundle's transcription prompt. Rendered inside the
                bundle's chat template after the audio.
            max_tokens: most tokens to generate (>= 1); the decoder's context must hold the
                prompt, the audio tokens and these, or the clip is refused before any encoding.
            temperature: 0 for greedy decoding; above 0, llama.cpp samples with this temperature.
            top_p: nucleus threshold when sampling.
            seed: the sampler's seed when sampling.
            sampling_rate: the rate of `audio` when it is samples (default: the bundle's, 16 kHz).
            on_text: called with each piece of the answer as it is decoded (streaming).
            on_timed_text: called with each answer and its span of audio as soon as it is complete:
                a window's with "each" (a long recording's subtitles, cue by cue), the whole
                clip's with "joined"; the same entries as the result's `timed_text`. Both callbacks
                run on the caller's thread while the run holds its context (a slow one delays the
                next window); one that raises ends the run, its exception passed on unchanged.
            prompt_special_tokens: read `<|im_end|>` and the like in `prompt` as control tokens
                (default: as text, so a prompt cannot end the user's turn).
            compressor: which of the bundle's compressors (`Runtime.compressors`: avg3, unseg, ...)
                with its adapter; None: the bundle's default (the first exported); "auto": the one
                with the least compression whose audio tokens fit the context and `max_audio_tokens`.
            max_audio_tokens: with "auto", a budget of audio tokens (fewer tokens, faster answers).
            windows: a clip longer than the encoder's window (30 s): "joined" puts every window's
                audio tokens in one prompt (the context must hold them all); "each" cuts it at
                pauses into windows, answers each on its own (with `max_tokens` and the audio budget
                per window) and joins the answers: any length, for transcripts of long recordings.
                None: the bundle's advice (`manifest.windows`, from its checkpoint), else "joined".
            window_seconds: with "each", windows shorter than the encoder's (cut at a pause in
                their second half): for a model that answers short clips better than full windows.
                None: the bundle's advice when it advises "each", else the encoder's window.
            beam_size: hypotheses kept by a beam search (1 to 16; 1 with no CTC weight: greedy).
                None: the bundle's advice (`manifest.decoding`), else 1. Not with temperature > 0.
            ctc_weight: the share of the bundle's CTC head in each hypothesis's score, 0 to 1
                (joint CTC/attention decoding: answers must explain all of the audio); only where the
                compressor has a CTC head (its own or the bundle's). None: the bundle's advice, else 0.

        Returns:
            RunResult: the text, each window's answer with its span of audio (`timed_text`),
            token counts, per-stage timings in ms, decode rate, peak RSS and warnings about the
            input (a truncated file).

        Raises:
            EdgelalmError: unreadable or too short audio, a clip too long for the context,
                max_tokens < 1; the message is one line, worded for the user.
        """
        # numpy's integers (an index, a value read from an array) are whole numbers too.
        max_tokens, seed = _plain_int(max_tokens), _plain_int(seed)
        beam_size, max_audio_tokens = _plain_int(beam_size), _plain_int(max_audio_tokens)
        _check_run_arguments(audio, prompt, max_tokens, temperature, top_p, seed, sampling_rate, on_text, on_timed_text)
        _check_flag("prompt_special_tokens", prompt_special_tokens)
        candidates = self._candidates(compressor, max_audio_tokens)
        decoding = self.decoding_for(temperature, top_p, seed, beam_size, ctc_weight, compressor)
        windows, window_seconds = self.windows_for(windows, window_seconds)
        cut = self._cut_settings(windows, window_seconds)
        with self._run_slot() as context:
            return self._run(
                context,
                audio, prompt, max_tokens, decoding, sampling_rate, on_text, on_timed_text,
                prompt_special_tokens, candidates, max_audio_tokens, windows == "each", cut,
            )  # fmt: skip

    def _run(
        self,
        context: LlamaContext,
        audio: Path | str | np.ndarray | Sequence[float],
        prompt: str | None,
        max_tokens: int,
        decoding: Decoding,
        sampling_rate: int | None,
        on_text: Callable[[str], None] | None,
        on_timed_text: Callable[[TimedText], None] | None,
        prompt_special_tokens: bool,
        candidates: list[str],
        max_audio_tokens: int | None,
        each_window: bool,
        cut: FeatureSettings,
    ) -> RunResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        clock = functools.partial(_lap, timings)

        target_rate = self.features.sampling_rate
        with clock("features"):
            windows, total_samples, warnings = self._windows_of(audio, sampling_rate, cut, each_window)
        prompt_ids, text_tokens = self.prompt_fitting(prompt, max_tokens, prompt_special_tokens)
        # A window (or a tail after full windows) shorter than 30 ms gives the encoder nothing.
        usable = [n for n in window_lengths(total_samples, self.features) if usable_window(n, self.features)]
        if not usable:
            raise _too_short(total_samples, target_rate)
        room = self.context_limit - text_tokens - max_tokens
        budget = min(room, max_audio_tokens) if max_audio_tokens is not None else room
        if each_window:
            longest_window = min(total_samples, cut.window_samples)
            return self._run_each_window(
                context, windows, longest_window, prompt_ids, text_tokens, max_tokens, budget, candidates,
                decoding, on_text, on_timed_text, timings, started, warnings,
            )  # fmt: skip
        encoder_frames = sum(encoder_output_frames(mel_frames_for(n, self.features)) for n in usable)
        specs = [self.compressors[label].spec for label in candidates]
        if all(spec.audio_tokens_per_second for spec in specs):  # fixed rates: known from the header
            tightest = min(specs, key=lambda spec: spec.max_audio_tokens(encoder_frames))
            needed = tightest.max_audio_tokens(encoder_frames)
            self._check_context(tightest, encoder_frames, needed, text_tokens, max_tokens, budget)

        # The encoder's frames are kept only for a CTC head that reads them.
        keep_frames = decoding.ctc_weight > 0 and any(self.compressors[label].ctc_reads_frames for label in candidates)
        read = self._read_joined(
            windows, candidates, keep_frames, clock, total_samples, text_tokens, max_tokens, budget
        )
        # The least compression that fits: the most tokens (the earlier listed on a tie).
        chosen = max(read.embeddings, key=lambda label: (read.tokens[label], -candidates.index(label)))
        option, audio_tokens = self.compressors[chosen], read.tokens[chosen]
        audio_embeddings = np.concatenate(read.embeddings[chosen])
        choice_note = ""
        if len(candidates) > 1:
            others = ", ".join(
                f"{label} {read.tokens[label]}" + ("" if label in read.embeddings else " (too many)")
                for label in candidates
                if label != chosen
            )
            limit = f"the budget of {budget}" if budget < room else f"the {room} the context leaves"
            choice_note = (
                f"auto chose {chosen}: {audio_tokens} audio tokens, the least compression within {limit} ({others})"
            )

        with clock("prefill"):
            reused_tokens = self._prefill(
                context, option, audio_embeddings, prompt_ids, text_tokens, max_tokens, decoding
            )
        ctc_audio = read.frames if keep_frames and option.ctc_reads_frames else read.embeddings[chosen]
        text, generated, first_token_at, decode_started = self._generate(
            context, option, max_tokens, decoding, ctc_audio, on_text
        )
        tally = _Tally(read.samples, audio_tokens, read.windows, text_tokens, generated, reused_tokens)
        tally.decode_seconds, tally.first_token_at = time.perf_counter() - decode_started, first_token_at
        tally.timed_text.append(_timed_text(0, read.samples, text, read.speech, target_rate))
        if on_timed_text is not None:
            on_timed_text(tally.timed_text[-1])
        return self._result(text, tally, timings, started, context, warnings, chosen, choice_note, "joined", decoding)

    def _windows_of(
        self, audio: Path | str | np.ndarray | Sequence[float], sampling_rate: int | None, cut: FeatureSettings,
        each_window: bool,
    ) -> tuple[Iterator[np.ndarray], int, list[str]]:  # fmt: skip
        """The clip's windows as `cut` cuts them (at pauses where `each_window`), its length in
        samples at the features' rate, and the warnings about it so far."""
        target_rate = self.features.sampling_rate
        if not isinstance(audio, (str, os.PathLike)):  # samples: an array, or a list of numbers
            file_rate = target_rate if sampling_rate is None else sampling_rate
            samples = samples_in_memory(audio)
            warnings = [note for note in [loudness_warning(samples)] if note]
            samples = prepare_samples(samples, file_rate, target_rate, warnings=warnings)
            return iter(split_windows(samples, cut, cut_at_pauses=each_window)), len(samples), warnings
        # A file is read window by window: memory stays flat with its length, and one too long
        # for the context is refused from its header, or at the window that overflows.
        info = open_audio(Path(audio))
        warnings = [note for note in [header_warning(info)] if note]
        # Read lazily: a loudness warning joins `warnings` once the last window is read.
        windows = stream_windows(stream_audio(info, target_rate, warnings), cut, cut_at_pauses=each_window)
        return windows, info.resampled_length(target_rate), warnings

    def _read_joined(
        self,
        windows: Iterator[np.ndarray],
        candidates: list[str],
        keep_frames: bool,
        clock: Callable[[str], contextlib.AbstractContextManager[None]],
        total_samples: int,
        text_tokens: int,
        max_tokens: int,
        budget: int,
    ) -> _JoinedAudio:
        """Every window encoded and compressed by each candidate, for one audio span; with `auto`,
        a candidate is dropped once its tokens overflow `budget` (the last one left is refused)."""
        read = _JoinedAudio({label: [] for label in candidates}, dict.fromkeys(candidates, 0))
        speech_from: int | None = None  # the clip's speech, from its windows' (one cue for it all)
        speech_to = 0
        while True:
            with clock("features"):
                window = next(windows, None)
                if window is None:
                    break
                read.samples += len(window)
                if not usable_window(len(window), self.features):
                    continue
                if (speech := speech_span(window, self.features)) is not None:
                    window_start = read.samples - len(window)
                    speech_from = window_start + speech[0] if speech_from is None else speech_from
                    speech_to = window_start + speech[1]
                features = log_mel_window(window, self.features)
            with clock("encoder"):
                frames = self.encoder(features)
            read.windows += 1
            if keep_frames:
                read.frames.append(frames)
            with clock("compressor"):
                for label in list(read.embeddings):
                    read.embeddings[label].append(self.compressors[label].graph(frames))
                    read.tokens[label] += read.embeddings[label][-1].shape[0]
                    # Variable-rate compressors are known only now: stop at the first window that overflows.
                    if read.tokens[label] > budget:
                        if len(read.embeddings) == 1:
                            self._refuse_partway(
                                self.compressors[label].spec, read.tokens[label], read.samples, total_samples,
                                text_tokens, max_tokens, budget,
                            )  # fmt: skip
                        del read.embeddings[label]
        if not read.windows:  # a file that decodes to less than its header counts (a cut MP3)
            raise _too_short(read.samples, self.features.sampling_rate, decoded=True)
        read.speech = None if speech_from is None else (speech_from, speech_to)
        return read

    def _run_each_window(
        self,
        context: LlamaContext,
        windows: Iterator[np.ndarray],
        longest_window: int,
        prompt_ids: list[int],
        text_tokens: int,
        max_tokens: int,
        budget: int,
        candidates: list[str],
        decoding: Decoding,
        on_text: Callable[[str], None] | None,
        on_timed_text: Callable[[TimedText], None] | None,
        timings: dict[str, float],
        started: float,
        warnings: list[str],
    ) -> RunResult:
        """Each window (cut at a pause) answered on its own, one after another, the answers joined
        with a space; one window's audio tokens in memory at a time, so a clip may be any length."""
        clock = functools.partial(_lap, timings)
        # The compressor is chosen for the longest window a clip of this length can have (header only).
        window_frames = encoder_output_frames(mel_frames_for(longest_window, self.features))
        fitting = [
            label for label in candidates if self.compressors[label].spec.max_audio_tokens(window_frames) <= budget
        ]
        # A variable-rate compressor's worst case (unseg: every frame a segment) is far above what
        # speech gives: asked for alone, it is held to the budget window by window instead.
        per_window = (
            not fitting and len(candidates) == 1 and not self.compressors[candidates[0]].spec.audio_tokens_per_second
        )
        if per_window:
            fitting = candidates
        if not fitting:
            tightest = min(candidates, key=lambda label: self.compressors[label].spec.max_audio_tokens(window_frames))
            raise EdgelalmError(
                f"a window of {longest_window / self.features.sampling_rate:.0f} s gives up to "
                f"{self.compressors[tightest].spec.max_audio_tokens(window_frames)} audio tokens with {tightest}, "
                f"over {self._audio_limit(budget, text_tokens, max_tokens)}; a shorter window or avg/sample with a "
                f"factor K={-(-window_frames // budget)} would fit"
            )
        # The least compression that fits (the earlier listed on a tie), as with joined windows.
        chosen = max(
            fitting,
            key=lambda label: (self.compressors[label].spec.max_audio_tokens(window_frames), -candidates.index(label)),
        )
        option = self.compressors[chosen]
        answers: list[str] = []
        tally = _Tally()
        # The stream reads as the joined text: a window's answer starts after a space, once something
        # was said, and without its leading spaces.
        separator, answer_started = "", False

        def stream(piece: str) -> None:
            nonlocal answer_started
            if on_text is None:
                return
            if not answer_started:
                piece = piece.lstrip()
                if not piece:
                    return
                piece, answer_started = separator + piece, True
            on_text(piece)

        rate = self.features.sampling_rate
        for window in windows:
            window_start = tally.samples
            tally.samples += len(window)
            if not usable_window(len(window), self.features):
                continue
            with clock("features"):
                features = log_mel_window(window, self.features)
            with clock("encoder"):
                frames = self.encoder(features)
            with clock("compressor"):
                embeddings = option.graph(frames)
            if per_window and embeddings.shape[0] > budget:
                raise EdgelalmError(
                    f"the window ending at {tally.samples / rate:.1f} s gives {embeddings.shape[0]} audio tokens "
                    f"with {chosen}, over {self._audio_limit(budget, text_tokens, max_tokens)}; a shorter "
                    "window (--window-seconds) or a fixed-rate compressor would fit"
                )
            separator, answer_started = (" " if answers else ""), False
            with clock("prefill"):
                tally.reused_tokens += self._prefill(
                    context, option, embeddings, prompt_ids, text_tokens, max_tokens, decoding
                )
            text, generated, first_token_at, decode_started = self._generate(
                context, option, max_tokens, decoding, [frames if option.ctc_reads_frames else embeddings], stream
            )
            tally.decode_seconds += time.perf_counter() - decode_started
            tally.first_token_at = tally.first_token_at or first_token_at
            tally.windows += 1
            tally.audio_tokens += embeddings.shape[0]
            tally.prompt_tokens += text_tokens  # the prompt is read once per window
            tally.generated += generated
            if text.strip():
                answers.append(text.strip())
            speech = speech_span(window, self.features)
            tally.timed_text.append(
                _timed_text(window_start, tally.samples, text, None if speech is None else (
                    window_start + speech[0], window_start + speech[1]), rate)
            )  # fmt: skip
            if on_timed_text is not None:
                on_timed_text(tally.timed_text[-1])
        if not tally.windows:  # a file that decodes to less than its header counts (a cut MP3)
            raise _too_short(tally.samples, rate, decoded=True)
        choice = (
            f"auto chose {chosen} for each window: at most {option.spec.max_audio_tokens(window_frames)} audio "
            f"tokens a window, the least compression within {budget}"
            if len(candidates) > 1
            else ""
        )
        return self._result(
            " ".join(answers), tally, timings, started, context, warnings, chosen, choice, "each", decoding
        )

    def _prefill(
        self,
        context: LlamaContext,
        option: CompressorOption,
        embeddings: np.ndarray,
        prompt_ids: list[int],
        text_tokens: int,
        max_tokens: int,
        decoding: Decoding,
    ) -> int:
        """The prompt around one span of audio embeddings into the context; returns the prompt
        tokens before the audio that the prefix cache kept. A beam search's hypotheses share the
        prompt's cells and take `max_tokens` cells each."""
        answers = decoding.beam_size if decoding.searches else 1
        context.ensure_context(
            text_tokens + embeddings.shape[0] + answers * max_tokens,
            keep_cells=True,
            sequences=answers + 1 if decoding.searches else 1,
        )
        context.use_adapter(option.adapter)  # a change drops the cached prefix: its keys differ
        reused_tokens = context.start_with(self.before_audio, reuse=self.prefix_cache)
        context.feed_embeddings(embeddings)
        context.feed_tokens(prompt_ids)
        return reused_tokens

    def _result(
        self,
        text: str,
        tally: _Tally,
        timings: dict[str, float],
        started: float,
        context: LlamaContext,
        warnings: list[str],
        chosen: str,
        choice: str,
        window_mode: WindowMode,
        decoding: Decoding,
    ) -> RunResult:
        finished = time.perf_counter()
        timings["decode"] = tally.decode_seconds * 1000
        timings["time_to_first_token"] = ((tally.first_token_at or finished) - started) * 1000
        timings["total"] = (finished - started) * 1000
        audio_seconds = tally.samples / self.features.sampling_rate
        # Each prompt's first token is prefill's: the rate counts the tokens after it.
        first_tokens = tally.windows if window_mode == "each" else 1
        return RunResult(
            text=text,
            audio_seconds=round(audio_seconds, 3),
            audio_tokens=tally.audio_tokens,
            audio_tokens_per_second=round(tally.audio_tokens / audio_seconds, 3),
            windows=tally.windows,
            prompt_tokens=tally.prompt_tokens,
            generated_tokens=tally.generated,
            timings_ms={name: round(value, 2) for name, value in timings.items()},
            decode_tokens_per_second=round((tally.generated - first_tokens) / tally.decode_seconds, 2)
            if tally.generated > first_tokens and tally.decode_seconds > 0
            else 0.0,
            peak_rss_mb=round(peak_rss_mb(), 1),
            context_tokens=context.n_ctx,
            reused_prompt_tokens=tally.reused_tokens,
            warnings=warnings,
            compressor=chosen,
            compressor_choice=choice,
            window_mode=window_mode,
            decoding=decoding.describe(),
            timed_text=tally.timed_text,
        )

    def windows_for(self, windows: WindowMode | None, window_seconds: float | None) -> tuple[WindowMode, float | None]:
        """The window mode and length a run uses: the caller's, else the bundle's advice, else joined."""
        advice = self.manifest.windows
        if windows is None:
            windows = advice.mode if advice is not None else "joined"
        check_choice("windows", windows, WINDOW_MODES)
        if window_seconds is None and windows == "each" and advice is not None and advice.mode == "each":
            window_seconds = advice.seconds
        return windows, window_seconds

    def _cut_settings(self, windows: WindowMode, window_seconds: float | None) -> FeatureSettings:
        """The features' settings with the window a clip is cut into: the encoder's, or a shorter one."""
        if window_seconds is None:
            return self.features
        if not is_real_number(window_seconds):
            raise EdgelalmError(f"window_seconds must be a number of seconds, got {window_seconds!r}")
        encoder_seconds = self.features.window_seconds
        if windows != "each":
            raise EdgelalmError("window_seconds applies to windows answered each on its own (windows='each')")
        if not 1.0 <= window_seconds <= encoder_seconds:
            raise EdgelalmError(
                f"window_seconds must be from 1 s to the encoder's window of {encoder_seconds:g} s, "
                f"got {window_seconds:g}"
            )
        return dataclasses.replace(self.features, window_samples=round(window_seconds * self.features.sampling_rate))

    def _refuse_partway(
        self,
        spec: CompressorSpec,
        audio_tokens: int,
        read_samples: int,
        total_samples: int,
        text_tokens: int,
        max_tokens: int,
        budget: int,
    ) -> None:
        """A variable-rate compressor's tokens overflowed the context (or the budget) before the clip's end."""
        rate = self.features.sampling_rate
        fitting_seconds = read_samples / rate * budget / audio_tokens
        if budget < self.context_limit - text_tokens - max_tokens:
            limit = (
                f"the audio-token budget of {budget}: its first {read_samples / rate:.0f} s already give {audio_tokens}"
            )
        else:
            limit = (
                f"the decoder's context of {self.context_limit} tokens: its first {read_samples / rate:.0f} s already "
                f"give {audio_tokens} audio tokens with {spec.label}, plus {text_tokens} prompt and {max_tokens} "
                "answer tokens"
            )
        raise EdgelalmError(
            f"the clip ({total_samples / rate:.0f} s) does not fit {limit}; at that rate about "
            f"{fitting_seconds:.0f} s fit"
        )

    def _generate(
        self,
        context: LlamaContext,
        option: CompressorOption,
        max_tokens: int,
        decoding: Decoding,
        ctc_audio: list[np.ndarray],
        on_text: Callable[[str], None] | None,
    ) -> tuple[str, int, float | None, float]:
        """The answer after the prefilled prompt; `ctc_audio`: what the option's CTC head reads of the
        clip, window by window (its frames where `CompressorOption.ctc_reads_frames`, else its
        embeddings), scored where the decoding weighs it."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        first_token_at = None
        decode_started = time.perf_counter()
        generated = 0
        if decoding.searches:
            # The whole answer is known only when the search ends: its first token comes then, and
            # the decode time is the search's (the rate: the answer's tokens after the first over it).
            token_ids: Iterable[int] = self._search(context, max_tokens, decoding, ctc_audio, option.ctc)
            first_token_at = time.perf_counter()
        else:
            token_ids = context.generate(
                max_tokens, decoding.temperature, decoding.top_p, decoding.seed, self.stop_ids,
                stop_at_end=self.stop_at_end_of_answer,
            )  # fmt: skip
        for token_id in token_ids:
            if first_token_at is None:
                first_token_at = decode_started = time.perf_counter()
            generated += 1
            piece = utf8.decode(self.decoder.token_bytes(token_id))
            if piece:
                pieces.append(piece)
                if on_text:
                    on_text(piece)
        tail = utf8.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_text:
                on_text(tail)
        return "".join(pieces), generated, first_token_at, decode_started

    def _search(
        self,
        context: LlamaContext,
        max_tokens: int,
        decoding: Decoding,
        ctc_audio: list[np.ndarray],
        ctc: CtcHead | None,
    ) -> list[int]:
        """A beam search over the prefilled prompt, joint with the compressor's CTC head where weighted."""
        scorer = None
        if decoding.ctc_weight > 0:
            assert ctc is not None  # decoding_for refuses a weight without a head
            # Each window on its own, as the head was trained (a head with layers attends within
            # one window: over a long joined clip its attention would grow with the square).
            scorer = CtcPrefixScorer(np.concatenate([ctc(window) for window in ctc_audio]))
        advance, release = context.beams(decoding.beam_size)
        try:
            tokens, _ = beam_search(
                advance, self._end_ids(), max_tokens, decoding.beam_size, scorer, decoding.ctc_weight
            )
        finally:
            release()
        return tokens

    def _end_ids(self) -> frozenset[int]:
        """Every token that ends an answer: the checkpoint's stop tokens and llama.cpp's
        end-of-generation ones (read once: a scan of the vocabulary)."""
        if self._end_of_answer_ids is None:
            eog = (token for token in range(self.decoder.n_vocab) if self.decoder.is_end_of_generation(token))
            self._end_of_answer_ids = frozenset(self.stop_ids) | frozenset(eog)
        return self._end_of_answer_ids

    def decoding_for(
        self,
        temperature: float,
        top_p: float,
        seed: int,
        beam_size: int | None,
        ctc_weight: float | None,
        compressor: str | None = None,
    ) -> Decoding:
        """How a run decodes: the caller's choices, else the bundle's advice (greedy without one).
        Sampling (temperature > 0) is not a search: asked with a beam or a CTC weight, refused. A CTC
        weight needs a head for each compressor the run may use (`compressor`, as `run` takes it)."""
        if beam_size is not None and (not is_whole_number(beam_size) or not 1 <= beam_size <= MAX_BEAM_SIZE):
            raise EdgelalmError(f"beam_size must be a whole number from 1 to {MAX_BEAM_SIZE}, got {beam_size!r}")
        if ctc_weight is not None and not (is_real_number(ctc_weight) and 0 <= ctc_weight <= 1):
            raise EdgelalmError(f"ctc_weight must be a number from 0 to 1, got {ctc_weight!r}")
        if temperature > 0:
            if (beam_size or 1) > 1 or (ctc_weight or 0) > 0:
                raise EdgelalmError(
                    "sampling (temperature > 0) draws one answer; a beam search or a CTC weight decodes greedily: "
                    "choose one"
                )
            return Decoding(float(temperature), float(top_p), seed)  # a Fraction is a real number too
        advice = self.manifest.decoding
        if beam_size is None:
            beam_size = advice.beam_size if advice is not None else 1
        if ctc_weight is None:
            ctc_weight = advice.ctc_weight if advice is not None else 0.0
        headless = self.manifest.headless_compressors(self._candidates(compressor, None))
        if ctc_weight > 0 and headless:
            which = f" for {', '.join(headless)}" if self.manifest.compressors else ""
            raise EdgelalmError(
                f"bundle {self.bundle} has no CTC head{which} (only a checkpoint or adapter trained with one "
                "has: README, Run); ctc_weight must be 0"
            )
        return Decoding(float(temperature), float(top_p), seed, int(beam_size), float(ctc_weight))

    def _check_context(
        self,
        spec: CompressorSpec,
        encoder_frames: int,
        audio_tokens: int,
        text_tokens: int,
        max_tokens: int,
        budget: int,
    ) -> None:
        """Refuse a clip the decoder's context (or the audio-token budget) cannot hold, naming the
        limit and what would fit it."""
        if audio_tokens <= budget:
            return
        room = self.context_limit - text_tokens - max_tokens
        seconds = encoder_frames / ENCODER_FRAMES_PER_SECOND
        if budget < room:
            raise EdgelalmError(
                f"the clip ({seconds:.0f} s) gives {audio_tokens} audio tokens with {spec.label}, over the budget "
                f"of {budget}; {self._fitting_advice(spec, encoder_frames, budget)}"
            )
        rate = spec.audio_tokens_per_second
        # room > 0: _run refused a prompt and answer that fill the context before any audio.
        longest = f" ({spec.label} fits at most {room / rate:.0f} s)" if rate else ""
        advice = f"{longest}; {self._fitting_advice(spec, encoder_frames, room)}"
        raise EdgelalmError(
            f"the clip ({seconds:.0f} s, {audio_tokens} audio tokens with "
            f"{spec.label}) plus {text_tokens} prompt and {max_tokens} answer tokens needs "
            f"{text_tokens + audio_tokens + max_tokens} tokens; the decoder's context is {self.context_limit}{advice}"
        )

    def _fitting_advice(self, spec: CompressorSpec, encoder_frames: int, limit: int) -> str:
        """What would hold a clip of `encoder_frames` in `limit` audio tokens: the least compression
        among the bundle's other fixed-rate compressors that fits, `--windows each` where the clip
        is longer than a window and a window of it with `spec` fits, and a bundle exported with a
        factor that fits (the only way named before, where the bundle had one already)."""
        tokens = {
            label: option.spec.max_audio_tokens(encoder_frames)
            for label, option in self.compressors.items()
            if option.spec.audio_tokens_per_second
        }
        fitting = [label for label in tokens if tokens[label] <= limit]
        ways = [f"--compressor {max(fitting, key=tokens.__getitem__)}"] if fitting else []
        # The window `--windows each` would cut: the bundle's advised one, else the encoder's.
        each_cut = self._cut_settings(*self.windows_for("each", None))
        window_frames = encoder_output_frames(mel_frames_for(each_cut.window_samples, self.features))
        if encoder_frames > window_frames and spec.max_audio_tokens(window_frames) <= limit:
            ways.append("--windows each (window by window)")
        ways.append(f"a bundle exported with avg or sample and a factor K={-(-encoder_frames // limit)}")
        return (f"{', '.join(ways[:-1])} or {ways[-1]}" if len(ways) > 1 else ways[0]) + " would fit it"

    def _audio_limit(self, budget: int, text_tokens: int, max_tokens: int) -> str:
        """What holds a run's audio tokens: the caller's budget, or what the context leaves."""
        room = self.context_limit - text_tokens - max_tokens
        if budget < room:
            return f"the budget of {budget}"
        return (
            f"the {room} the decoder's context of {self.context_limit} leaves after {text_tokens} prompt "
            f"and {max_tokens} answer tokens"
        )

    def prompt_fitting(self, prompt: str | None, max_tokens: int, prompt_special_tokens: bool) -> tuple[list[int], int]:
        """The prompt's tokens after the audio and the text tokens around it, refused in one line
        where they and `max_tokens` leave no room for audio (the CLI asks once for all its files)."""
        prompt_ids = self.prompt_tokens_after_audio(
            self.prompt.default_prompt if prompt is None else prompt, prompt_special_tokens
        )
        text_tokens = len(self.before_audio) + len(prompt_ids)
        if text_tokens + max_tokens >= self.context_limit:
            raise EdgelalmError(
                f"{text_tokens} prompt and {max_tokens} answer tokens leave no room for audio in the decoder's "
                f"context of {self.context_limit}; {self._advice_without_room(text_tokens, max_tokens)}"
            )
        return prompt_ids, text_tokens

    def _advice_without_room(self, text_tokens: int, max_tokens: int) -> str:
        """What to change when the prompt and the answer leave no room for audio: the larger of them."""
        if text_tokens >= self.context_limit:
            return "the prompt alone is over the context: a shorter prompt"
        return "ask for fewer answer tokens" if max_tokens >= text_tokens else "a shorter prompt or fewer answer tokens"

    def _candidates(self, compressor: str | None, max_audio_tokens: int | None) -> list[str]:
        """The compressors a run may use: the one asked for, the default, or all of them for auto."""
        if max_audio_tokens is not None:
            _check_whole_number("max_audio_tokens", max_audio_tokens, 1)
        if compressor is None:
            return [self.compressor_spec.label]
        if not isinstance(compressor, str):  # a list or a dict: unhashable, a TypeError below
            raise EdgelalmError(f"compressor must be one compressor's name, or {AUTO}; got {compressor!r}")
        if compressor == AUTO:
            return list(self.compressors)
        if compressor not in self.compressors:
            raise EdgelalmError(
                f"this bundle has no compressor {compressor!r}; it has {', '.join(self.compressors)} (or {AUTO})"
            )
        return [compressor]


def _timed_text(start: int, end: int, text: str, speech: tuple[int, int] | None, rate: int) -> TimedText:
    """An answer and its span of samples (and its speech's, where some stands out), in seconds."""
    seconds = [round(sample / rate, 3) for sample in (start, end, *(speech or ()))]
    return TimedText(seconds[0], seconds[1], text.strip(), *seconds[2:])


def _real_folder(bundle: Path) -> Path:
    """`bundle`, or where it leads when a link is on its way: a link switched to another bundle
    while this one loads (a `current` link moved by a deployment) mixed the files of both."""
    try:
        real = bundle.resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13): read_manifest says so
        return bundle
    return bundle if real == bundle.absolute() else real


def _bundle_identity(bundle: Path) -> tuple[int, ...] | None:
    """The folder's and its manifest's identity on disk: export replaces a bundle by renaming a
    new folder into its place, so a Runtime that read some files before the swap and some after
    sees a different folder at the end of its load."""
    try:
        folder, manifest = bundle.stat(), (bundle / MANIFEST_FILE).stat()
    except OSError:
        return None
    return folder.st_dev, folder.st_ino, manifest.st_ino, manifest.st_size, manifest.st_mtime_ns


def _check_vocabulary(decoder: LlamaModel, manifest: Manifest) -> None:
    """The GGUF's vocabulary is the one the manifest's token ids are of: the audio's place, the
    turns and the stop tokens are found by id. Another decoder's GGUF (or one with tokens moved)
    answered other words with exit 0."""
    expected = manifest.decoder.vocab_size  # type: ignore[union-attr]  # checked by the caller
    if decoder.n_vocab != expected:
        raise EdgelalmError(f"{decoder.gguf_path} holds {decoder.n_vocab} tokens; the manifest says {expected}")
    for token in manifest.special_tokens.named().values():
        if (found := decoder.token_bytes(token.id)) != token.text.encode():
            raise EdgelalmError(
                f"{decoder.gguf_path}: token {token.id} is {found.decode(errors='backslashreplace')!r}; the manifest "
                f"says {token.text!r} (is it this bundle's decoder?)"
            )


def _free_llama(contexts: list[LlamaContext], model: LlamaModel, process_id: int) -> None:
    """A Runtime's llama.cpp memory: its contexts, then the weights they were made from. Not in a
    forked child, whose copy of llama.cpp's state is the parent's."""
    if os.getpid() != process_id:
        return
    for context in contexts:
        context.close()
    contexts.clear()
    model.close()


def _check_whole_number(name: str, value: object, minimum: int) -> None:
    if not is_whole_number(value) or value < minimum:
        raise EdgelalmError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, (bool, np.bool_)):  # "no" is truthy: it would turn the option on
        raise EdgelalmError(f"{name} must be True or False, got {value!r}")


# llama.cpp reads a seed of 2^32 - 1 (LLAMA_DEFAULT_SEED) as "a random one" and wraps larger ones.
_LARGEST_SEED = 2**32 - 2


def _plain_int(value: _T) -> _T:
    """A numpy integer as Python's int (which the checks and llama.cpp's bindings take); else as given."""
    return int(value) if isinstance(value, np.integer) else value  # type: ignore[return-value]


def _check_run_arguments(
    audio: object,
    prompt: object,
    max_tokens: object,
    temperature: object,
    top_p: object,
    seed: object,
    sampling_rate: object,
    on_text: object,
    on_timed_text: object,
) -> None:
    """Runtime.run's arguments, refused in one line before anything is read: a wrong type would
    otherwise fail deep inside (or, as a NaN temperature, print control tokens as the answer)."""
    if audio is None:
        raise EdgelalmError("no audio: pass a file's path or samples")
    if isinstance(audio, (bytes, bytearray, memoryview)):  # were read as samples: "must be numbers"
        raise EdgelalmError(
            "audio given as bytes: pass a file's path as str or pathlib.Path, or samples as an array "
            "(a file's contents: soundfile.read(io.BytesIO(data)))"
        )
    if on_text is not None and not callable(on_text):
        raise EdgelalmError(f"on_text must be a function called with each piece of the answer, got {on_text!r}")
    if on_timed_text is not None and not callable(on_timed_text):
        raise EdgelalmError(
            f"on_timed_text must be a function called with each answer and its span, got {on_timed_text!r}"
        )
    check_run_options(prompt, max_tokens, temperature, top_p, seed)
    if sampling_rate is not None and isinstance(audio, (str, os.PathLike)):
        raise EdgelalmError("sampling_rate is for samples; a file's own header says its rate")


def check_run_options(prompt: object, max_tokens: object, temperature: object, top_p: object, seed: object) -> None:
    """The options every run of `Runtime.run` checks that need no bundle: the CLI checks them once
    before the bundle loads (they were refused file by file, after it)."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise EdgelalmError(f"prompt must be text, got {type(prompt).__name__}")
        check_unicode_text(prompt, "the prompt")
    _check_whole_number("max_tokens", max_tokens, 1)
    if not (is_finite_number(temperature) and temperature >= 0):
        raise EdgelalmError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if not (is_real_number(top_p) and 0 < top_p <= 1):
        raise EdgelalmError(f"top_p must be a number above 0 and at most 1, got {top_p!r}")
    if not is_whole_number(seed) or not 0 <= seed <= _LARGEST_SEED:
        raise EdgelalmError(f"seed must be a whole number from 0 to {_LARGEST_SEED}, got {seed!r}")


def _too_short(samples: int, sampling_rate: int, decoded: bool = False) -> EdgelalmError:
    """A clip with no window of 30 ms or more; `decoded`: counted from what was read, not the header."""
    what = " could be decoded" if decoded else ""
    return EdgelalmError(
        f"the clip is too short ({samples / sampling_rate * 1000:.0f} ms{what}): the encoder needs at least 30 ms"
    )


@contextlib.contextmanager
def _lap(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to `timings[stage]`, in milliseconds."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - started) * 1000


def device_settings(device: str) -> tuple[list[str], int]:
    """onnxruntime providers and llama.cpp GPU layers for `device`, or a clear refusal."""
    if device == "cpu":
        return ["CPUExecutionProvider"], 0
    check_choice("device", device, DEVICES)
    from edgelalm.runtime.llama_backend import import_llama_cpp
    from edgelalm.runtime.onnx_backend import import_onnxruntime

    onnxruntime = import_onnxruntime()
    llama_cpp = import_llama_cpp()
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise EdgelalmError(
            "device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu (see runtimes/cuda)"
        )
    if not llama_cpp.llama_supports_gpu_offload():
        raise EdgelalmError(
            "device cuda: llama-cpp-python was built without GPU offload; reinstall it with "
            "CMAKE_ARGS=-DGGML_CUDA=on (see runtimes/cuda)"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], 999
