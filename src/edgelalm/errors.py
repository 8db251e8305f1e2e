"""The one exception type that reaches the user as a single line on stderr."""


class EdgelalmError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The CLI prints `edgelalm: error: <message>` and exits non-zero; anything else that
    escapes is a bug in edgelalm.
    """
