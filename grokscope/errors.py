"""The one exception type for user errors.

Every message says what was found, what was expected and where, so the CLI can print it as one line.
"""


class GrokscopeError(ValueError):
    """A user-facing error: bad input, an unreadable file, a configuration that does not fit.

    Subclasses ``ValueError`` so that argument validation reads naturally in user code.

    >>> str(GrokscopeError("p = 12", expected="a prime", where="Task"))
    'Task: found p = 12; expected a prime'
    """

    def __init__(self, found: str, expected: str | None = None, where: str | None = None):
        self.found, self.expected, self.where = found, expected, where
        message = f"found {found}" if expected is not None else found
        if expected is not None:
            message += f"; expected {expected}"
        if where is not None:
            message = f"{where}: {message}"
        super().__init__(message)
