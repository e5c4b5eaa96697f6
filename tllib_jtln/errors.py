"""The one exception type for bad input from a user.

The command line prints ``str(error)`` as a single line on stderr and exits with
status 2, without a traceback. It subclasses :class:`ValueError`, so library
callers that catch ``ValueError`` keep working.
"""


class UserError(ValueError):
    """Bad input (a flag, a file, a dataset, a shape): the message names the thing and the fix."""
