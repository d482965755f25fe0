"""Callbacks (OGC API - Processes 1.0, conformance class ``callback``): the URLs of an execute
request's ``subscriber`` are told when its job runs (``inProgressUri``: its status), succeeds
(``successUri``: its results document) or fails (``failedUri``: the exception).

The URLs are the user's, so they are reached only through the guarded HTTP client of image
hrefs (:func:`aquamask.processes.pipeline.sources.remote.checked_session`): it connects only to
public addresses, or to the operator's ``limits.href_private_hosts``, checking each address it
connects to; redirects are not followed. A callback is one POST in a thread of its own with a
short timeout, never retried: a receiver that is down, slow or refused neither blocks nor fails
the job (a worker process waits for its callbacks, at most ``TIMEOUT_S``, before it exits).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

from aquamask.processes.errors import Forbidden
from aquamask.processes.pipeline.sources.http import HttpPolicy
from aquamask.processes.pipeline.sources.remote import checked_session
from aquamask.processes.pipeline.sources.urls import HrefPolicy, is_public
from aquamask.processes.settings import Settings

LOGGER = logging.getLogger(__name__)
TIMEOUT_S = 5.0
_pending: list[threading.Thread] = []
_lock = threading.Lock()


def policy(settings: Settings) -> HrefPolicy:
    """Where callbacks may go: the schemes of hrefs, any public host, and the operator's
    private hosts."""
    limits = settings.limits
    return HrefPolicy.of(limits.href_schemes, (), limits.href_private_hosts,
                         field="subscriber")


def check(subscriber: Mapping[str, str], settings: Settings) -> None:
    """Refuse, before a job exists, a callback URL that could never be sent: its scheme,
    syntax, credentials, or an address of a private network written in it (a host name is
    resolved, and its addresses checked, when the callback is sent)."""
    checked = policy(settings)
    for key, url in subscriber.items():
        field = dataclasses.replace(checked, field=f"subscriber.{key}")
        field.check_url(url)
        host = urlsplit(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a name
            continue
        if not is_public(address) and host not in field.private_hosts:
            raise Forbidden(f"{field.field}: '{host}' is a loopback, link-local or private "
                            "address, which this server does not send to")


def send(settings: Settings, url: str, document: dict[str, Any]) -> threading.Thread:
    """POST ``document`` to ``url`` in the background."""
    thread = threading.Thread(target=_post, args=(policy(settings), url, document),
                              name="aquamask-callback")
    with _lock:
        _pending[:] = [t for t in _pending if t.is_alive()]
        _pending.append(thread)
    thread.start()
    return thread


def drain(timeout: float = TIMEOUT_S + 1) -> None:
    """Wait for the callbacks still being sent, at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    with _lock:
        pending = list(_pending)
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))


def _post(checked: HrefPolicy, url: str, document: dict[str, Any]) -> None:
    # the path only: a query may carry the receiver's token
    shown = urlsplit(url)._replace(query="", fragment="").geturl()
    session = checked_session(checked, HttpPolicy(retries=0, timeout=TIMEOUT_S))
    try:
        response = session.post(url, json=document, timeout=TIMEOUT_S, allow_redirects=False)
        LOGGER.info("callback to %s answered %d", shown, response.status_code)
    except Exception as err:  # noqa: BLE001 - refused, unreachable or slow: the job goes on
        LOGGER.warning("callback to %s not delivered: %s", shown, err)
    finally:
        session.close()
