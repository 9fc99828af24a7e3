"""Files written whole or not at all, with the permissions a new file gets from the umask (not mkstemp's 0600).

    with atomic_write(out_dir / "summary.json") as f:
        json.dump(summary, f)
    with atomic_write(path, "wb", fsync=True) as f:     # checkpoints: on disk before the rename
        torch.save(checkpoint, f)

The file is written beside its target under a hidden temporary name and renamed over it, so a crash leaves the old
file or the new one, never half of either.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


# Read once, at import (one thread): os.umask is process-wide, and the judge writes from several threads.
UMASK = current_umask()


@contextmanager
def atomic_write(path: Path, mode: str = "w", fsync: bool = False):
    """Open a temporary file beside `path` for writing (`w` text as UTF-8, or `wb`); on success it replaces `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it: mkstemp's files are private (0600)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
