"""The one exception type for errors a user can cause (bad config, missing file, bad input),
and the one way to quote another library's error in such a message."""


class TranslatorError(Exception):
    """An error with a message meant for the user; the CLI prints it as one line, exit code 2.

    A subclass's `prefix` ("config error: ") starts its messages: raise sites give the message
    alone (one already starting with the prefix keeps it once)."""

    exit_code = 2
    calm = False
    """True for a stop the user asked for (Ctrl-C in training): printed without `error:`."""
    prefix = ""

    def __str__(self) -> str:
        # One line whatever the message quotes: a YAML key, a file name or a library's message
        # may hold line breaks.
        text = " ".join(super().__str__().splitlines())
        return text if text.startswith(self.prefix) else self.prefix + text


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's
    name when the message is empty: what a one-line error quotes of another library's error."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
