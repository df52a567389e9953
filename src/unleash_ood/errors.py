"""The one exception type for a user's mistake: the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input from the user (missing data, wrong checkpoint, invalid value, NaN loss...)."""
