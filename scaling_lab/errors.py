"""The one error type users see: bad input, reported as a sentence instead of a traceback."""


class ScalingLabError(ValueError):
    """Bad input (a spec, a file, a key or a value), with a message that says what would be valid.

    The command line prints the message and exits with status 2.
    """


class SpecError(ScalingLabError):
    """A model spec that cannot be built: an unknown key, a wrong type or an invalid value."""
