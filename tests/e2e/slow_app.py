"""A test-only WSGI app for tests/e2e/test_slow_clients.py: aquamask's app, plus
``GET /test/sleep?s=N``, which holds its request thread N seconds (at most 10), as a long
synchronous job does, and answers the pid of the web worker that served it."""
import os
import time
from urllib.parse import parse_qs

from aquamask.server.wsgi import app as aquamask_app


def app(environ, start_response):
    if environ["PATH_INFO"] != "/test/sleep":
        return aquamask_app(environ, start_response)
    time.sleep(min(float(parse_qs(environ["QUERY_STRING"])["s"][0]), 10.0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
