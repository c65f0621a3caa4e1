"""One exception type for everything a user can get wrong.

The CLI turns a :class:`GainCellError` into a single line on stderr and its ``exit_code`` (2), so every
check of user input (configs, files, shapes, model types) raises this rather than letting torch fail deep
inside. It subclasses ``ValueError`` so library callers can catch it the usual way.
:class:`NonFiniteError`, a model that computes NaN, is a failed run rather than a bad argument: exit code 1.
"""


class GainCellError(ValueError):
    """Invalid user input: the message names the argument and what was expected."""

    exit_code = 2


class NonFiniteError(GainCellError):
    """The model computed a NaN or infinite number where a result was due: the run stops with no result."""

    exit_code = 1


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors about what a library rejected
    (``default``, or the exception's type name, when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else (type(error).__name__ if default is None else default)
