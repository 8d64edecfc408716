"""The one exception type of the `deploy` package."""


class DeployError(RuntimeError):
    """A bundle or input that cannot be used; the message says what and what to do.

    The CLIs print `error: <message>` and exit 2 (1 is kept for a parity mismatch).
    """
