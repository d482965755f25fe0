"""One retry policy for every remote call a source makes: STAC API searches and item fetches
(requests + urllib3), DHuS queries and downloads (sentinelsat's requests session), the COG
range reads GDAL does through /vsicurl for configured catalogues, and those of images users
point at (:mod:`.remote`, a requests session).

Retried: HTTP 429, 500, 502, 503, 504 and connection/read timeouts, with exponential backoff
(``backoff * 2**(n-1)`` seconds, honouring Retry-After); POST searches too, since a STAC search
has no side effect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class HttpPolicy:
    retries: int = 4
    backoff: float = 1.0  # seconds before the second try; doubled after each failure
    timeout: float = 60.0

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "HttpPolicy":
        config = config or {}
        return cls(retries=int(config.get("retries", cls.retries)),
                   backoff=float(config.get("backoff", cls.backoff)),
                   timeout=float(config.get("timeout", cls.timeout)))

    def retry(self) -> Retry:
        return Retry(total=self.retries, connect=self.retries, read=self.retries,
                     status=self.retries, backoff_factor=self.backoff,
                     status_forcelist=RETRY_STATUSES, allowed_methods=None,
                     respect_retry_after_header=True, raise_on_status=False)

    def mount(self, session: requests.Session) -> requests.Session:
        adapter = HTTPAdapter(max_retries=self.retry())
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def session(self) -> requests.Session:
        return self.mount(requests.Session())

    def gdal_options(self) -> dict[str, str]:
        """GDAL's own retries for /vsicurl (429, 500, 502, 503, 504 and timeouts; GDAL
        doubles the delay after each try)."""
        return {"GDAL_HTTP_MAX_RETRY": str(self.retries),
                "GDAL_HTTP_RETRY_DELAY": str(self.backoff),
                "GDAL_HTTP_TIMEOUT": str(int(max(self.timeout, 1))),
                "GDAL_HTTP_CONNECTTIMEOUT": str(int(max(min(self.timeout, 30), 1))),
                # COGs: read only the header and the needed tiles, never list directories
                "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.jp2,.JP2,.zip",
                "GDAL_HTTP_MULTIRANGE": "YES", "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
                "VSI_CACHE": "TRUE"}
