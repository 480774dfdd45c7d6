"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input (a file, a flag, a recipe key): one sentence naming it and the fix."""
