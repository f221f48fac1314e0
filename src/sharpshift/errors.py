"""Errors a user can fix: printed as one line, exit code 2."""


class UserError(Exception):
    """Bad input (a file, a value, a key). The message names the problem and the fix."""

    exit_code = 2
