"""Processes of this host as /proc tells them: a pid with its start time names one process for
good (a pid alone is reused), so a recorded worker is known alive or gone."""
from __future__ import annotations

from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int | str) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone or a
    zombie. ``"self"``: this process."""
    found = _stat_fields(pid)
    if found is None or found[0] == "Z":
        return None
    return found[19]


def is_alive(pid: int | None, started: str | None) -> bool:
    """Whether the process recorded as (``pid``, ``started``) still runs."""
    return pid is not None and pid > 0 and started is not None \
        and process_start(pid) == started


def command_line(pid: int) -> bytes | None:
    """The NUL-separated arguments of a running (not zombie) ``pid``."""
    if process_start(pid) is None:
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
