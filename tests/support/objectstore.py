"""A stand-in S3 object store for the tests: moto's S3 server on a free loopback port.

moto implements the S3 REST API (buckets, objects, ranged GETs, multipart uploads, listing) over
real HTTP, so s3fs (botocore) and GDAL's /vsis3/ talk to it exactly as to AWS S3 or MinIO. It
is used because no real object store can run here (no network, no MinIO binary). What it does
not check, the tests do not pretend it does: moto enforces no access policies and accepts any
keys, so an "access denied" answer is injected into s3fs (tests/processes/test_results_store.py);
a missing bucket and a store that is down (the server stopped) are real."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tests.support.server import free_port

KEY, SECRET, REGION = "aquamask-test-key", "aquamask-test-secret", "us-east-1"


@dataclass
class S3StandIn:
    endpoint: str
    server: Any

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def new_bucket(self) -> str:
        name = f"aquamask-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in found.get("Contents", []))

    def options(self, **extra: Any) -> dict[str, Any]:
        """``storage.options`` for s3fs: this endpoint, the keys, one attempt per request (a
        store that is down fails in about a second, not after botocore's five tries)."""
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET,
                "client_kwargs": {"region_name": REGION},
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
                **extra}

    def environment(self, bucket: str, prefix: str = "results") -> dict[str, str]:
        """The server's environment for results at s3://bucket/prefix on this store."""
        return {"AQUAMASK__PATHS__RESULTS": f"s3://{bucket}/{prefix}",
                "AQUAMASK__STORAGE__OPTIONS__ENDPOINT_URL": self.endpoint,
                "AQUAMASK__STORAGE__OPTIONS__KEY": KEY,
                "AQUAMASK__STORAGE__OPTIONS__SECRET": SECRET,
                "AQUAMASK__STORAGE__OPTIONS__CLIENT_KWARGS__REGION_NAME": REGION,
                "AQUAMASK__STORAGE__OPTIONS__CONFIG_KWARGS":
                    '{retries: {max_attempts: 1}, connect_timeout: 2}'}


def start_s3() -> S3StandIn:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3StandIn(endpoint=f"http://127.0.0.1:{port}", server=server)
