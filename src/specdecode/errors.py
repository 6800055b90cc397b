"""The one exception type that reaches users.

Anything raised as a :class:`SpecDecodeError` is a problem with the caller's input or
environment; its message says what was wrong and what to do. The CLI prints it as one
line on stderr and exits with status 2, never with a traceback.
"""


class SpecDecodeError(Exception):
    """A user-facing error: bad input, a missing model, an unsupported option."""
