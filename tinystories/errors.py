"""The one kind of error a user can fix, and how library errors become one line.

    raise UserError("--ckpt_path x.ckpt: no such file; give a .ckpt written by fit")

`python -m tinystories` (`tinystories/__main__.py`) prints a `UserError` as `error: <message>` and exits with 1, so
every message names the file or option at fault and says what to do.
"""


class UserError(Exception):
    """Bad input (a file, a folder, an option) or a run that cannot go on; printed as one line, no traceback."""


class LossDiverged(UserError):
    """The training loss became NaN or infinite."""


def one_line(text: object, limit: int = 300) -> str:
    """`text` with its whitespace runs as single spaces, cut to `limit` characters (library errors span lines)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."
