"""A test-only WSGI app for tests/e2e/test_slow_clients.py: aquamask's app, plus
``GET /test/sleep?s=N``, which holds its request thread N seconds (at most 10), as a long
synchronous job does. Every answer names the web worker that gave it (``X-Worker-Pid``)."""
import os
import time
from urllib.parse import parse_qs

from aquamask.server.wsgi import app as aquamask_app


def app(environ, start_response):
    def respond(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))],
                              exc_info)

    if environ["PATH_INFO"] != "/test/sleep":
        return aquamask_app(environ, respond)
    time.sleep(min(float(parse_qs(environ["QUERY_STRING"])["s"][0]), 10.0))
    respond("200 OK", [("Content-Type", "text/plain")])
    return [b"slept"]
