"""The one exception type of the `mscnn` package."""


class MscnnError(ValueError):
    """A model config, lead selection, input or checkpoint that cannot be used.

    The message names the bad key or value, what was expected, and what to do. CLIs catch
    it and print `error: <message>` instead of a traceback.
    """
