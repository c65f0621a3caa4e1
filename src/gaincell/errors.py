"""One exception type for everything a user can get wrong.

The CLI turns a :class:`GainCellError` into a single line on stderr and exit code 2, so every check
of user input (configs, files, shapes, model types) raises this rather than letting torch fail deep
inside. It subclasses ``ValueError`` so library callers can catch it the usual way.
"""


class GainCellError(ValueError):
    """Invalid user input: the message names the argument and what was expected."""
