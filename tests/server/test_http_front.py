"""The web worker's request buffering (server/http_worker.py), the bounded health checks
(server/health.py) and where the metrics files go (server/metrics.py), without a server: the
same code on real bytes, real folders and real threads. tests/e2e/test_slow_clients.py runs
them in a server."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.errors import ConfigError
from gunicorn.http.parser import RequestParser
from werkzeug.exceptions import RequestEntityTooLarge

from aquamask.processes.settings import Settings
from aquamask.server import metrics
from aquamask.server.health import Probe
from aquamask.server.http_worker import (
    BufferingWorker,
    FrontLimits,
    Refused,
    RequestBuffer,
    error_response,
    max_head_bytes,
)

LIMITS = FrontLimits(header_timeout_s=10, body_timeout_s=30, max_body_bytes=1000)
PEER = ("127.0.0.1", 40000)


def buffer_of(data: bytes = b"", limits: FrontLimits = LIMITS) -> RequestBuffer:
    return RequestBuffer(Config(), PEER, limits, data, now=0.0)


def fed_byte_by_byte(data: bytes) -> tuple[RequestBuffer, int]:
    """The buffer, and how many bytes it had when it first said the request was whole."""
    buffer = buffer_of()
    for i in range(len(data)):
        buffer.feed(data[i:i + 1])
        if buffer.complete(now=1.0):
            return buffer, i + 1
    return buffer, -1


def parsed_by_gunicorn(data: bytes) -> tuple[str, bytes]:
    """What the pool thread's parser makes of the buffered bytes: the path and the body."""
    request = next(RequestParser(Config(), [data], PEER))
    return request.path, request.body.read()


def chunked(body: bytes, size: int) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


POST = b"POST /processes/p/execution HTTP/1.1\r\nHost: a\r\n"


def test_a_request_is_whole_at_its_last_byte_and_not_before():
    body = b'{"inputs": {"x": 1}}'
    requests = [
        b"GET /conformance HTTP/1.1\r\nHost: a\r\n\r\n",
        POST + b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 3),
        # an extension, trailers
        POST + b"Transfer-Encoding: chunked\r\n\r\n4;name=v\r\n" + body[:4] + b"\r\n"
        + chunked(body[4:], 7)[:-2] + b"X-Trailer: 1\r\n\r\n",
    ]
    for data in requests:
        buffer, whole_at = fed_byte_by_byte(data)
        assert whole_at == len(data), data
        path, read = parsed_by_gunicorn(bytes(buffer.data))
        assert path == buffer.path == data.split(b" ")[1].decode()
        assert read == (b"" if data.startswith(b"GET") else body)


def test_the_body_deadline_follows_the_head():
    buffer = buffer_of(POST + b"Content-Length: 10\r\n\r\n")
    assert buffer.deadline == LIMITS.header_timeout_s  # from the connection (now=0)
    assert not buffer.complete(now=4.0)
    assert buffer.deadline == 4.0 + LIMITS.body_timeout_s


def test_pipelined_bytes_after_a_request_do_not_keep_it_waiting():
    data = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHo"
    buffer = buffer_of(data)
    assert buffer.complete(now=0.0) and buffer.path == "/a"


@pytest.mark.parametrize("data", [
    POST + b"Content-Length: 1001\r\n\r\n",
    # refused at the chunk size that passes the limit, before its data comes
    POST + b"Transfer-Encoding: chunked\r\n\r\n1f4\r\n" + b"x" * 500 + b"\r\n1f5\r\n",
    # few data bytes in much framing (long chunk extensions): the framing counts too
    POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"1;e=%s\r\nx\r\n" % (b"v" * 8000) * 9,
])
def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(data):
    buffer = buffer_of(data)
    with pytest.raises(Refused) as refused:
        buffer.complete(now=0.0)
    assert refused.value.error.code == 413


def test_a_chunked_body_at_the_limit_is_whole():
    body = b"y" * LIMITS.max_body_bytes
    buffer = buffer_of(POST + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 100))
    assert buffer.complete(now=0.0)
    assert parsed_by_gunicorn(bytes(buffer.data))[1] == body


@pytest.mark.parametrize("framing, code", [
    (b"zz\r\n", 400),
    (b"5 \r\nhello\r\n", 400),  # blanks only before an extension, as gunicorn
    (b"5\r\nhelloXX", 400),  # no CRLF after the data
    (b"1" * 9000, 400),  # a chunk-size line that never ends
])
def test_malformed_chunked_framing_is_refused(framing, code):
    buffer = buffer_of(POST + b"Transfer-Encoding: chunked\r\n\r\n" + framing)
    with pytest.raises(Refused) as refused:
        buffer.complete(now=0.0)
    assert refused.value.error.code == code


def test_a_head_longer_than_gunicorn_accepts_is_refused_with_431():
    buffer = buffer_of(b"GET / HTTP/1.1\r\n")
    assert not buffer.complete(now=0.0)
    buffer.feed(b"X-Long: " + b"a" * max_head_bytes(Config()))
    with pytest.raises(Refused) as refused:
        buffer.complete(now=0.0)
    assert refused.value.error.code == 431


def test_a_head_gunicorn_refuses_goes_to_its_thread_whole():
    """gunicorn's own error answer (from the buffered bytes, so without waiting)."""
    buffer = buffer_of(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert buffer.complete(now=0.0) and buffer.malformed


def test_expect_100_continue_is_answered_only_before_the_body():
    head = POST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    waiting = buffer_of(head)
    assert not waiting.complete(now=0.0) and waiting.wants_continue
    sent = buffer_of(head + b"{}")
    assert sent.complete(now=0.0) and not sent.wants_continue
    too_large = buffer_of(POST + b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
    with pytest.raises(Refused):  # 413 instead of 100
        too_large.complete(now=0.0)


def test_the_error_answer_is_the_apps_json_on_a_closed_connection():
    wire = error_response(RequestEntityTooLarge("the request body is larger than 5 bytes"))
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 413 Request Entity Too Large"
    assert "Connection: close" in lines and f"Content-Length: {len(body)}" in lines
    # the app's exception document (problem details with the OWS code and description)
    assert json.loads(body) == {"type": "about:blank", "code": "RequestEntityTooLarge",
                                "title": "Request Entity Too Large", "status": 413,
                                "detail": "the request body is larger than 5 bytes",
                                "description": "the request body is larger than 5 bytes"}


def test_tls_http2_and_the_proxy_protocol_are_refused_at_start(tmp_path):
    class Log:
        def warning(self, *args):
            pass

    BufferingWorker.check_config(Config(), Log())
    for name, value in [("certfile", str(tmp_path / "cert.pem")), ("proxy_protocol", "v1"),
                        ("http2_cleartext", "prior-knowledge")]:
        cfg = Config()
        cfg.set(name, value)
        with pytest.raises(ConfigError, match="plain HTTP/1.1"):
            BufferingWorker.check_config(cfg, Log())


# -- /health/ready's checks: each bounded, none started twice --------------------------------
def test_a_hung_check_is_cut_at_the_deadline_and_never_started_twice():
    release = threading.Event()
    calls = []

    def hung() -> str:
        calls.append(1)
        release.wait(10)
        return "ok"

    def broken() -> str:
        raise RuntimeError("SELECT secret FROM jobs -- postgresql://u:pw@db/jobs")

    probe = Probe({"hung": hung, "broken": broken, "fine": lambda: "ok"}, timeout_s=0.3)
    try:
        for _ in range(3):
            began = time.monotonic()
            result = probe.run()
            assert time.monotonic() - began < 1.0
            assert result == {"hung": "error: no answer within 0.3 s",
                              "broken": "error: RuntimeError", "fine": "ok"}
        assert len(calls) == 1  # the later probes waited on the running check
        release.set()
        time.sleep(0.1)
        assert probe.run()["hung"] == "ok" and len(calls) == 2
    finally:
        release.set()


# -- the metrics folder: off home's disk, private ---------------------------------------------
def settings_for(home: Path) -> Settings:
    return Settings.load(environ={"AQUAMASK__HOME": str(home)})


def test_the_metrics_folder_is_on_a_memory_filesystem_apart_from_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    home = Path.cwd()  # on the repository's disk
    folder = metrics.default_multiprocess_dir(settings_for(home))
    assert folder.parent == Path("/dev/shm") and str(os.getuid()) in folder.name
    assert os.stat(folder.parent).st_dev != os.stat(home).st_dev
    # one per home: two servers do not empty each other's values
    assert metrics.default_multiprocess_dir(settings_for(tmp_path)) != folder
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert metrics.default_multiprocess_dir(settings_for(home)).parent == tmp_path


@pytest.fixture
def no_multiprocess_values(monkeypatch):
    """prepare_multiprocess without switching this test process's own metric values to files."""
    monkeypatch.setattr(metrics, "_install_value_class", lambda: None)
    monkeypatch.delenv(metrics.ENV, raising=False)


def test_a_metrics_folder_made_by_someone_else_is_refused(tmp_path, monkeypatch,
                                                          no_multiprocess_values):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # the folder lands here
    settings = settings_for(tmp_path / "home")
    folder = metrics.default_multiprocess_dir(settings)
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # writable by anyone: values could be planted
    with pytest.raises(RuntimeError, match="not a private folder"):
        metrics.prepare_multiprocess(settings)
    if os.geteuid() == 0:  # another user's, private to them
        folder.chmod(0o700)
        os.chown(folder, 12345, -1)
        with pytest.raises(RuntimeError, match="not a private folder"):
            metrics.prepare_multiprocess(settings)
    folder.rmdir()
    folder.symlink_to(tmp_path)
    with pytest.raises(RuntimeError, match="not a private folder"):
        metrics.prepare_multiprocess(settings)
    folder.unlink()
    try:
        assert metrics.prepare_multiprocess(settings) == folder
        assert folder.stat().st_mode & 0o777 == 0o700
        (folder / "counter_1.db").write_bytes(b"")
        metrics.remove_multiprocess_dir(settings)
        assert not folder.exists()
    finally:
        os.environ.pop(metrics.ENV, None)


def test_a_configured_metrics_folder_is_used_and_kept(tmp_path, no_multiprocess_values):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__METRICS__DIR": "metrics"})
    try:
        assert metrics.prepare_multiprocess(settings) == tmp_path / "metrics"
        metrics.remove_multiprocess_dir(settings)
        assert (tmp_path / "metrics").is_dir()
    finally:
        os.environ.pop(metrics.ENV, None)
