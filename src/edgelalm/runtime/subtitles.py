"""A run's answers with the span of audio each answers, written as subtitles: SubRip (.srt) and
WebVTT (.vtt). Torch-free."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgelalm.checks import check_choice
from edgelalm.constants import SUBTITLE_FORMATS, SubtitleFormat


# Here rather than beside RunResult: the writer and `edgelalm.TimedText` load without onnxruntime
# and llama.cpp.
@dataclass(frozen=True)
class TimedText:
    """An answer and the audio it answers, in seconds from the clip's start: one window with
    `--windows each`, the whole clip when its windows were answered joined; and where in it the
    speech is (its first to its last loud 20 ms, padded by 0.2 s: `features.speech_span`), which a
    subtitle cue spans. None where nothing stands out of its silence or noise: the whole span."""

    start_seconds: float
    end_seconds: float
    text: str
    speech_start_seconds: float | None = None
    speech_end_seconds: float | None = None

    @property
    def cue_seconds(self) -> tuple[float, float]:
        """When a subtitle shows this answer: its speech, else its whole span."""
        if self.speech_start_seconds is None or self.speech_end_seconds is None:
            return self.start_seconds, self.end_seconds
        return self.speech_start_seconds, self.speech_end_seconds


def _timestamp(seconds: float, decimal_mark: str) -> str:
    # SubRip writes 00:01:02,500 and WebVTT 00:01:02.500; both count hours past 99.
    milliseconds = max(0, round(seconds * 1000))
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole_seconds, rest = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal_mark}{rest:03d}"


def _cue_lines(text: str) -> list[str]:
    # A blank line ends a cue in both formats: an answer's empty lines would end it early and let
    # the rest read as a cue of its own.
    return [line.strip() for line in text.splitlines() if line.strip()]


def _srt_lines(lines: list[str]) -> list[str]:
    # SubRip has no escapes, and lenient readers (players, the `srt` package) take a line of digits
    # followed by a timing-like line for the next cue even without a blank line, and some any line
    # holding "-->": an answer's lines become one, its arrows "->".
    return [" ".join(lines).replace("-->", "->")]


def _vtt_lines(lines: list[str]) -> list[str]:
    # WebVTT cue text is markup: & and < start entities and tags; with > as &gt; too, "-->", which
    # may not appear in a cue, cannot either.
    return [line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for line in lines]


class SubtitleWriter:
    """Cues written as the answers come, numbered from 1 (SubRip) or after a WEBVTT header
    (WebVTT), so that a long recording's subtitles grow window by window; an answer that says
    nothing gets no cue. The header is written with the first cue, or by `finish` (a file without
    cues is still WebVTT), so that a run that fails before any answer writes nothing."""

    def __init__(self, subtitle_format: SubtitleFormat, write: Callable[[str], object]) -> None:
        check_choice("subtitle_format", subtitle_format, SUBTITLE_FORMATS)
        self.subtitle_format = subtitle_format
        self.write = write
        self.cues_written = 0
        self.header_written = False

    def add(self, answer: TimedText) -> None:
        lines = _cue_lines(answer.text)
        if not lines:  # a window of silence: no cue
            return
        srt = self.subtitle_format == "srt"
        decimal_mark = "," if srt else "."
        start, end = answer.cue_seconds
        span = f"{_timestamp(start, decimal_mark)} --> {_timestamp(end, decimal_mark)}"
        number = [str(self.cues_written + 1)] if srt else []
        self._write_header()
        self.write("\n".join([*number, span, *(_srt_lines(lines) if srt else _vtt_lines(lines))]) + "\n\n")
        self.cues_written += 1

    def finish(self) -> None:
        self._write_header()

    def _write_header(self) -> None:
        if not self.header_written:
            self.header_written = True
            if self.subtitle_format == "vtt":
                self.write("WEBVTT\n\n")


def to_subtitles(timed_text: Sequence[TimedText], subtitle_format: SubtitleFormat) -> str:
    """A whole file's subtitles at once, from a `RunResult.timed_text` (`SubtitleWriter`'s cues)."""
    parts: list[str] = []
    writer = SubtitleWriter(subtitle_format, parts.append)
    for answer in timed_text:
        writer.add(answer)
    writer.finish()
    return "".join(parts)
