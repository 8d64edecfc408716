"""The one exception type of the `compile` package."""


class CompileError(RuntimeError):
    """A build that cannot go on: bad request, missing tool, failed stage or parity.

    The message names the stage or value and what to do; CLIs print `error: <message>`.
    """


class ParityError(CompileError):
    """The build finished but its output disagrees with PyTorch (CLI exit status 1)."""
