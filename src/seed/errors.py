"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2.

Also `first_line`, how a library's exception is quoted inside such a line.
"""


class UserError(Exception):
    """Bad input (a file, a flag, a recipe key): one sentence naming it and the fix."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (library messages run to paragraphs)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
