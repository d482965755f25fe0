"""gunicorn settings; `aquamask serve` passes bind, workers and timeout from aquamask.yml."""
import os

wsgi_app = "aquamask.server.wsgi:app"
# Load the app once in the master: workers fork with pygeoapi configured, and the config files
# it renders are written once, not raced by every worker.
preload_app = True
worker_class = "gthread"
threads = int(os.environ.get("AQUAMASK_THREADS", "4"))
accesslog = "-"
errorlog = "-"
graceful_timeout = 30
