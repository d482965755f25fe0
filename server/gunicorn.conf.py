"""gunicorn settings; `aquamask serve` passes bind, workers and timeout from aquamask.yml."""
import os
import threading

from aquamask.processes.settings import Settings
from aquamask.server import metrics

settings = Settings.load()
wsgi_app = "aquamask.server.wsgi:app"
# Load the app once in the master: workers fork with pygeoapi configured, and the config files
# it renders are written once, not raced by every worker.
preload_app = True
# gthread whose event loop reads each request whole before a thread serves it, and gives
# /health its own threads: slow clients hold no thread (server/http_worker.py)
worker_class = "aquamask.server.http_worker.BufferingWorker"
threads = int(os.environ.get("AQUAMASK_THREADS", "4"))
# connections one worker holds, requests still arriving included: past it, new ones wait in
# the listen backlog (each buffers at most the largest head and limits.max_request_bytes)
worker_connections = settings.server.max_connections
accesslog = "-"
errorlog = "-"
graceful_timeout = 30

# Prometheus multiprocess mode: the folder is named before the app is preloaded, so every
# process started from here (web workers, the fork server and its job workers) writes there.
metrics.prepare_multiprocess(settings)


def on_starting(server):
    metrics.empty_multiprocess_dir()  # once per start (not on a HUP reload), before any fork


def post_fork(server, worker):
    # each web worker starts its own fork server in the background, ready for its first job
    if Settings.load().jobs.scheduler is None:
        from aquamask.processes.jobs.executors import start_fork_server
        threading.Thread(target=start_fork_server, name="fork-server-start", daemon=True).start()
    # and its MapServer processes, ready for its first map
    from aquamask.server.ows import start_map_engine
    threading.Thread(target=start_map_engine, args=(server.app.wsgi(),),
                     name="map-engine-start", daemon=True).start()


def child_exit(server, worker):
    metrics.mark_process_dead(worker.pid)


def on_exit(server):
    metrics.remove_multiprocess_dir(settings)  # off the tmpfs (memory) when the server stops
