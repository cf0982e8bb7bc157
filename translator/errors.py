"""The one exception type for errors a user can cause (bad config, missing file, bad input)."""


class TranslatorError(Exception):
    """An error with a message meant for the user; the CLI prints it as one line, exit code 2."""

    exit_code = 2
    calm = False
    """True for a stop the user asked for (Ctrl-C in training): printed without `error:`."""

    def __str__(self) -> str:
        # One line whatever the message quotes: a YAML key, a file name or a library's message
        # may hold line breaks.
        return " ".join(super().__str__().splitlines())
