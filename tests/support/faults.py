"""What the fault tests do to a real server: kill it as a crash would, give it a home of its
own over shared scenes, find its fork servers."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.support.server import Server

NO_LIMIT = {"AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "0"}


def kill_server(srv: Server) -> None:
    """SIGKILL gunicorn and its web workers, as a crash or an OOM kill would: no clean-up."""
    children = subprocess.run(["pgrep", "-P", str(srv.process.pid)], capture_output=True,
                              text=True).stdout.split()
    srv.process.kill()
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    srv.process.wait(timeout=30)


def new_home(tmp_path: Path, scenes: Path) -> Path:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    for scene in scenes.iterdir():
        os.link(scene, home / "data" / scene.name)
    return home


def fork_servers_by_web_worker(srv: Server) -> dict[int, list[int]]:
    """Each gunicorn worker's pid -> its multiprocessing fork server processes."""
    import psutil

    def command(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:  # ended meanwhile
            return ""

    return {web.pid: [p.pid for p in web.children()
                      if "multiprocessing.forkserver" in command(p)]
            for web in psutil.Process(srv.process.pid).children()}
