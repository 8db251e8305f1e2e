"""The one exception type that reaches the user as a single line on stderr."""


class EdgelalmError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The CLI prints `edgelalm: error: <message>` and exits non-zero; anything else that
    escapes is a bug in edgelalm.
    """


def error_gist(error: BaseException | str, last_line: bool = True) -> str:
    """A library's error (or its message, as a log line gives it) in one line of at most 500
    characters: its last non-empty line (transformers, pydantic and jinja put the cause last;
    onnxruntime first: `last_line=False`); a KeyError's bare key says which name was unknown."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if last_line else lines[0]) if lines else type(error).__name__
    # Its start and its end past 500 characters: transformers may list every model type, and
    # onnxruntime puts a source location and a signature before the cause ("... error msg: Resource
    # temporarily unavailable", which a cut at 300 left out), or paths after it.
    text = text if len(text) <= 500 else text[:200] + " ... " + text[-295:]
    return f"unknown name {text}" if isinstance(error, KeyError) else text


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (\\n, \\x1b): one line, as
    written, whatever a manifest, a file name or an error holds (a terminal title, a cleared screen,
    a forged line)."""
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)
