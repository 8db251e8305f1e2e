"""`run --subtitles`: the SubRip and WebVTT writer, read back by independent parsers (the `srt`
package and webvtt-py), on answers a model may give: several lines, blank lines, markup
characters, an arrow, nothing at all, and times past an hour."""

import html

import pytest
import srt
import webvtt

from edgelalm import TimedText
from edgelalm.constants import SUBTITLE_FORMATS
from edgelalm.errors import EdgelalmError
from edgelalm.runtime.subtitles import SubtitleWriter, to_subtitles

ANSWERS = [
    TimedText(0.0, 7.99, "set a timer for twenty minutes"),
    TimedText(7.99, 14.78, ""),  # a window of silence: no cue
    # its speech from 15.5 s to 19.25 s: the cue shows then, not over the window's silence
    TimedText(14.78, 22.77, "first line\n\n  second line after a blank one  \n", 15.5, 19.25),
    TimedText(22.77, 26.483, "a <b> tag, an & and an arrow --> in the text"),
    TimedText(26.483, 30.0, "windows\r\nline ends\rand a number line\n2\n00:00:05,000 --> 00:00:06,000\nas text"),
    TimedText(3725.5, 3731.25, "past an hour"),
    TimedText(360_000.5, 360_003.0, "past a hundred hours"),
]


def expected_cues(subtitle_format):
    """(start, end, the answer's lines without blank ones) for each answer that says something;
    SubRip, which has no escapes, gets them as one line, and -> for an answer's -->."""
    cues = []
    for answer in ANSWERS:
        lines = [line.strip() for line in answer.text.splitlines() if line.strip()]
        if lines:
            text = " ".join(lines).replace("-->", "->") if subtitle_format == "srt" else "\n".join(lines)
            cues.append((*answer.cue_seconds, text))
    return cues


def test_srt_reads_back_as_the_answers_and_their_times():
    text = to_subtitles(ANSWERS, "srt")
    cues = list(srt.parse(text))
    # An answer's number line and timing line stay its text: no cue of their own.
    assert [cue.index for cue in cues] == [1, 2, 3, 4, 5, 6]
    read = [(cue.start.total_seconds(), cue.end.total_seconds(), cue.content) for cue in cues]
    for (start, end, content), (want_start, want_end, want_content) in zip(read, expected_cues("srt"), strict=True):
        assert start == pytest.approx(want_start, abs=5e-4) and end == pytest.approx(want_end, abs=5e-4)
        assert content == want_content
    assert "01:02:05,500 --> 01:02:11,250" in text and "100:00:00,500 --> 100:00:03,000" in text
    # The parser's own writer gives the same file: the layout is SubRip's, not one this parser forgives.
    assert srt.compose(cues, reindex=False) == text


def test_vtt_reads_back_as_the_answers_and_their_times():
    text = to_subtitles(ANSWERS, "vtt")
    assert text.startswith("WEBVTT\n\n")
    captions = list(webvtt.from_string(text, strict=True))
    read = [
        (caption.start_time.in_milliseconds() / 1000, caption.end_time.in_milliseconds() / 1000, caption.text)
        for caption in captions
    ]
    for (start, end, content), (want_start, want_end, want_content) in zip(read, expected_cues("vtt"), strict=True):
        assert start == pytest.approx(want_start, abs=5e-4) and end == pytest.approx(want_end, abs=5e-4)
        # Cue text is markup: < & > are written as entities, so "-->" cannot end the time line's cue.
        assert html.unescape(content) == want_content
    assert "--> in the text" not in text and "&lt;b&gt;" in text and "an &amp; and" in text
    assert "01:02:05.500 --> 01:02:11.250" in text and "100:00:00.500 --> 100:00:03.000" in text


def test_an_unknown_format_is_refused():
    with pytest.raises(EdgelalmError, match="subtitle_format must be one of"):
        to_subtitles(ANSWERS, "SRT")


@pytest.mark.parametrize("subtitle_format", SUBTITLE_FORMATS)
def test_nothing_heard_is_an_empty_file(subtitle_format):
    text = to_subtitles([TimedText(0.0, 8.0, ""), TimedText(8.0, 9.5, " \n ")], subtitle_format)
    assert text == ("" if subtitle_format == "srt" else "WEBVTT\n\n")
    parsed = list(srt.parse(text)) if subtitle_format == "srt" else list(webvtt.from_string(text))
    assert parsed == []


@pytest.mark.parametrize("subtitle_format", SUBTITLE_FORMATS)
def test_cues_are_written_as_the_answers_come(subtitle_format):
    """`run --subtitles` writes each cue once its window is answered: nothing before the first
    answer that says something (a run that fails early leaves no half file), then after every
    answer a file that reads whole, one more cue each time."""
    written: list[str] = []
    writer = SubtitleWriter(subtitle_format, written.append)
    parse = (
        (lambda text: list(srt.parse(text)))
        if subtitle_format == "srt"
        else (lambda text: list(webvtt.from_string(text, strict=True)))
    )
    cues = 0
    for answer in [TimedText(0.0, 0.5, ""), *ANSWERS]:  # first, a window that heard nothing
        writer.add(answer)
        cues += bool(answer.text.strip())
        if cues == 0:
            assert written == []
        else:
            assert len(parse("".join(written))) == cues
    writer.finish()
    empty: list[str] = []
    SubtitleWriter(subtitle_format, empty.append).finish()
    assert "".join(empty) == ("" if subtitle_format == "srt" else "WEBVTT\n\n")
