"""The status blob's storage requests: BlockBlob, or PageBlob in 512-byte pages.

`status_blob_requests` is pure: it says which PUTs upload a blob. The HostGAPlugin
client wraps each in `PUT /status`; `put_status_blob` sends them to the SAS URL
directly (the fallback when the HostGAPlugin is unavailable).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Literal, NamedTuple

from wire.http import HttpClient

BlobType = Literal["BlockBlob", "PageBlob"]
STORAGE_API_VERSION = "2014-02-14"
PAGE_SIZE = 512
MAX_PAGE_WRITE = 4 * 1024 * 1024
# HTTP dates name days and months in English whatever the locale (strftime's %a and %b
# follow LC_TIME). Spelled here rather than taken from email.utils, whose package the
# daemon would otherwise import for this one header and hold for its whole life.
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BlobRequest(NamedTuple):
    """One storage PUT: URL, headers (including Content-Length) and body."""

    url: str
    headers: Mapping[str, str]
    body: bytes


def http_date(moment: datetime.datetime) -> str:
    """`moment` (timezone-aware) as an HTTP date: `Sun, 06 Nov 1994 08:49:37 GMT`."""
    utc = moment.astimezone(datetime.UTC)
    return (f"{DAYS[utc.weekday()]}, {utc.day:02d} {MONTHS[utc.month - 1]} {utc.year:04d} "
            f"{utc:%H:%M:%S} GMT")


def _with_query(url: str, extra: str) -> str:
    return f"{url}&{extra}" if "?" in url else f"{url}?{extra}"


def status_blob_requests(sas_url: str, content: bytes, blob_type: BlobType,
                         now: datetime.datetime | None = None) -> list[BlobRequest]:
    """The PUTs that store `content` at `sas_url` as a block blob or a page blob."""
    stamp = http_date(now or datetime.datetime.now(datetime.UTC))
    common = {"x-ms-date": stamp, "x-ms-version": STORAGE_API_VERSION}
    if blob_type == "BlockBlob":
        return [BlobRequest(sas_url, {**common, "x-ms-blob-type": "BlockBlob",
                                      "Content-Length": str(len(content))}, content)]
    size = -(-len(content) // PAGE_SIZE) * PAGE_SIZE  # rounded up to whole pages
    requests = [BlobRequest(sas_url, {**common, "x-ms-blob-type": "PageBlob",
                                      "x-ms-blob-content-length": str(size),
                                      "Content-Length": "0"}, b"")]
    page_url = _with_query(sas_url, "comp=page")
    for start in range(0, len(content), MAX_PAGE_WRITE):
        chunk = content[start:start + MAX_PAGE_WRITE]
        padded = chunk.ljust(-(-len(chunk) // PAGE_SIZE) * PAGE_SIZE, b"\0")
        end = start + len(padded) - 1
        requests.append(BlobRequest(page_url, {**common, "x-ms-page-write": "update",
                                               "x-ms-range": f"bytes={start}-{end}",
                                               "Content-Length": str(len(padded))}, padded))
    return requests


def put_status_blob(http: HttpClient, sas_url: str, content: bytes, blob_type: BlobType, *,
                    proxy: str | None = None) -> None:
    """Upload the status blob straight to storage (HttpProxy applies here)."""
    for request in status_blob_requests(sas_url, content, blob_type):
        headers = {k: v for k, v in request.headers.items() if k != "Content-Length"}
        http.request("PUT", request.url, headers=headers, body=request.body, proxy=proxy)
