"""Fetching listing photos named by URL (only with ``--fetch``): http and https only, a timeout, a
size cap and a few retries with back-off. Concurrency is bounded by the decode workers that call it
(one fetch at a time per worker process or Ray task)."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from app.jobs.scan.sources import ImageUnavailable, is_url, read_capped

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "heritage-match-scan/0.1"


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    timeout_s: float = 20.0
    max_bytes: int = 25 * 1024 * 1024
    retries: int = 2
    backoff_s: float = 0.5


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not take the fetch to file:, ftp: or any other scheme."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if not is_url(target):
            raise ImageUnavailable(f"redirect to {target!r} refused: only http and https are fetched")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_opener = urllib.request.build_opener(_HttpOnlyRedirects())


def fetch(url: str, policy: FetchPolicy) -> bytes:
    if not policy.enabled:
        raise ImageUnavailable(f"{url} is a URL: run the scan with --fetch to download listing photos")
    if not is_url(url):
        raise ImageUnavailable(f"{url!r}: only http and https URLs are fetched")
    last = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            time.sleep(policy.backoff_s * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with _opener.open(req, timeout=policy.timeout_s) as resp:
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise ImageUnavailable(f"{url} is larger than the limit of {policy.max_bytes // (1024 * 1024)} MB")
                return read_capped(resp, policy.max_bytes, url)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code not in RETRY_STATUS:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise ImageUnavailable(f"{url} could not be fetched ({last}) after {attempt + 1} attempt(s)")
