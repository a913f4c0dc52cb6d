"""The one error type that ``nad`` raises for bad input: the CLI prints it as a single line."""


class NadError(Exception):
    """A problem with the user's input (files, specs, options), explained in one line."""
