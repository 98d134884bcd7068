"""Errors caused by what a user passed in (a bad argument, file or name): the CLI prints them as one line."""


class UserError(ValueError):
    """A user-input error: the message says what was wrong and what is allowed."""
