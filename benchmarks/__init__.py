"""Benchmarks (see README.md); shared helpers."""
from __future__ import annotations

import time


def settle(pid: int, busy_percent: float = 5.0, timeout: float = 90.0) -> float:
    """Wait until the server ``pid`` and its children (web workers, their fork servers, which
    import torch in the background when a worker starts) use under ``busy_percent`` of a core
    over a second, so that start-up work is not measured; the seconds waited."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
        for process in processes:
            process.cpu_percent(None)
        time.sleep(1.0)
        busy = 0.0
        for process in processes:
            try:
                busy += process.cpu_percent(None)
            except psutil.NoSuchProcess:
                pass
        if busy < busy_percent:
            break
    return time.monotonic() - started
