"""Why a write to the results disk failed, in words a user can pass on.

GDAL reports a full disk as "write error at scanline N" and prints the errno (ENOSPC) on
stderr only, so the disk is asked directly: a small probe write, made while the failed job's
partial files still fill it, fails with the real reason (ENOSPC, EDQUOT, EROFS, EACCES)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_failure_reason(directory: Path, probe_bytes: int = 1 << 20) -> str | None:
    """The operating system's reason a write into ``directory`` fails now, or None if a
    write of ``probe_bytes`` succeeds."""
    try:
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"\0" * probe_bytes)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return os.strerror(err.errno) if err.errno else str(err)
    return None


def explain(err: OSError, directory: Path) -> OSError:
    """``err`` with the disk's reason in ``strerror`` (kept as is when the disk is fine)."""
    reason = write_failure_reason(directory)
    if reason is not None and reason not in (err.strerror or ""):
        err.strerror = f"{reason} ({err.strerror or err})"
    return err
