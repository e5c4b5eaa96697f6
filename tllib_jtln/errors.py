"""The one exception type for bad input from a user, and how the command line prints it.

The command line prints ``str(error)`` as a single line on stderr and exits with
status 2, without a traceback. It subclasses :class:`ValueError`, so library
callers that catch ``ValueError`` keep working.
"""


class UserError(ValueError):
    """Bad input (a flag, a file, a dataset, a shape): the message names the thing and the fix."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    A :class:`UserError` raised in a DataLoader worker reaches the main process re-raised by
    PyTorch with the message ``Caught UserError in DataLoader worker process N.\\nOriginal
    Traceback ...\\n<module>.UserError: <message>``: the original message is its last line that
    names the exception type. Other multi-line messages are joined with ``; ``.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        name = type(exc).__name__ + ": "
        for line in reversed(text.splitlines()):
            head, sep, message = line.partition(name)
            if sep and " " not in head.strip():
                return message.strip()
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
