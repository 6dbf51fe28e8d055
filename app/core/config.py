"""All settings of the service, read from the environment with the ``HM_`` prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HM_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("index"), description="Registry database, photo store and FAISS files.")
    models_dir: Path = Field(default=Path("models"), description="Model weights and exported models.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the registry database; default is SQLite at DATA_DIR/registry.db. "
        "PostgreSQL: postgresql+psycopg://ROLE:PASSWORD@HOST:PORT/DATABASE (see deploy/postgres-roles.sql)."
    )
    model: str = Field(
        default="auto",
        description="auto | efficientnet-lite1 | efficientnet-lite0 | "
                    "clip:<architecture>:<pretrained tag or checkpoint path>.",
    )
    clip_default: str = Field(
        default="clip:ViT-B-32:laion2b_s34b_b79k", description="The CLIP model that `auto` and `models fetch` use."
    )
    runtime: Literal["torch", "onnx", "onnx-int8", "openvino"] = Field(
        default="torch", description="What runs the image encoder: torch, or on CPU an export made by "
        "`heritage-match models export` (onnx and openvino: same vectors as torch; onnx-int8: faster, "
        "its own fingerprint)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto uses a GPU when torch sees one.")
    host: str = "127.0.0.1"
    port: int = 8000
    forwarded_allow_ips: str = Field(
        default="",
        description="Reverse proxies whose X-Forwarded-For header is trusted (comma-separated addresses, or *). "
        "Empty: the connection's address is the client's, so a client cannot pick its own address to dodge "
        "the wrong-key limit."
    )
    max_upload_mb: float = Field(default=25, description="Largest accepted upload (one photo).")
    max_request_mb: float = Field(
        default=200, description="Largest request that carries several photos (registry photo uploads, on the API and "
        "the web); each photo in it is still at most max_upload_mb."
    )
    max_image_pixels: int = Field(
        default=120_000_000, ge=1, description="Larger images are refused as decompression bombs (checked from the "
        "header, before any pixel is decoded; this setting, not Pillow's own default, is the limit)."
    )
    large_decode_pixels: int = Field(
        default=16_000_000, ge=1, description="Images of more pixels than this count as large decodes, of which at "
        "most HM_LARGE_DECODES run at once in a process (a large decode holds several hundred MB while it runs)."
    )
    large_decodes: int = Field(default=2, ge=1, description="Large decodes that may run at once in a process.")
    large_decode_wait_s: float = Field(
        default=30, gt=0, description="How long a large decode waits for its turn before the upload is refused (503)."
    )
    scan_max_line_kb: int = Field(
        default=256, ge=1, description="Longest line of a JSONL or CSV dump (KB); a longer line is reported in "
        "errors.jsonl and skipped without being held in memory."
    )
    scan_max_images_per_listing: int = Field(
        default=20, ge=1, description="Photos of one listing that a scan searches; the rest are reported in "
        "errors.jsonl and neither read nor decoded."
    )
    fetch_deadline_s: float = Field(
        default=30, gt=0, description="`scan --fetch`: the most seconds one photo's download may take in all "
        "(connecting, redirects and every read), whatever the server's pace."
    )
    fetch_allow_private: bool = Field(
        default=False, description="`scan --fetch` may fetch loopback, private, link-local and other non-public "
        "addresses (off: every address a host name resolves to must be public, after each redirect too)."
    )
    top_k: int = Field(default=5, description="Default number of artefacts a search returns.")
    batch_size: int | None = Field(
        default=None, ge=1, description="Images per forward pass when embedding many photos (default: 16 on a "
        "CPU, 256 on a GPU, where 16 left ViT-B-32 at a quarter of its measured throughput)."
    )
    match_threshold: float | None = Field(
        default=None, description="Calibrated score (0-1) at or above which a result is a `match` "
        "(default: the model's calibration)."
    )
    possible_threshold: float | None = Field(
        default=None, description="Calibrated score (0-1) at or above which a result is `possible` "
        "(default: the model's calibration)."
    )
    index_ann_min_vectors: int = Field(
        default=20_000, ge=0, description="Registry photos from which the index is IVF (approximate, recall@10 checked "
        ">= 0.99 at build) instead of exact flat search; 0 keeps it exact at any size."
    )
    region_proposals: bool = Field(
        default=True, description="Also search object regions of the query photo (several objects, clutter)."
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes of `heritage-match serve`.")
    threads: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("HM_THREADS", "HM_TORCH_THREADS", "threads"),
        description="Threads each process gives the model runtime, OpenCV, BLAS and FAISS (default: CPU cores "
        "divided by HM_WORKERS, at least 1, so that workers do not oversubscribe the cores).",
    )
    batch_wait_ms: float = Field(
        default=20, ge=0, description="Serving: how long a forward pass may wait for concurrent searches that are "
        "preparing their images to join it (micro-batching); a search alone never waits."
    )
    max_batch: int = Field(
        default=16, ge=1, description="Serving: most images in one micro-batch; 1 turns micro-batching off."
    )
    auth: bool = Field(
        default=True, description="Require an API key on every endpoint but /healthz and /readyz. false: every "
        "request acts as an admin (a single-user machine only)."
    )
    rate_limit_per_minute: float = Field(default=120, ge=0, description="Requests a minute per API key (0: no limit).")
    rate_limit_burst: int = Field(
        default=30, ge=1, description="Requests a key may send at once before the limit applies."
    )
    auth_failures_per_minute: float = Field(
        default=10, ge=0, description="Failed sign-ins and unknown API keys a minute per client address, after "
        "`HM_AUTH_FAILURES_BURST` at once; beyond, that address gets 429 (0: no limit)."
    )
    auth_failures_burst: int = Field(
        default=10, ge=1, description="Failed sign-ins a client address may make at once."
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed to call the API from a browser (default: none, CORS off).",
    )
    web_secret: str | None = Field(
        default=None,
        description="Key that signs web session cookies (default: a random one kept in the registry database, "
        "shared by every worker and replica)."
    )
    web_session_hours: float = Field(default=12, gt=0, description="Hours a web sign-in lasts.")
    web_cookie_secure: bool | None = Field(
        default=None, description="Send the session cookie over HTTPS only (default: when the request came over HTTPS)."
    )
    web_searches_kept: int = Field(
        default=200, ge=1, description="Web searches (query photo and results, for the results page and case report) "
        "kept in the registry database, shared by all server workers and replicas; the oldest go first."
    )
    shared_rate_limits: bool | None = Field(
        default=None, description="Keep the rate limits' counts in the registry database, so that a key's limit holds "
        "across all replicas (default: on with PostgreSQL, where replicas share one database; off with SQLite, where "
        "each server process counts in its memory)."
    )
    photo_store: Literal["files", "database"] = Field(
        default="files", description="Where registry photos' bytes are kept: `files` (DATA_DIR/photos, one folder "
        "every process must see) or `database` (the registry database: replicas on several machines need no shared "
        "folder)."
    )
    follow_poll_s: float = Field(
        default=1.0, gt=0, description="Servers: seconds between two reads of the registry's change feed, so that "
        "changes made by other replicas reach this one's index (PostgreSQL also wakes it at once by NOTIFY)."
    )
    archive: bool = Field(
        default=True, description="Keep every listing photo that a scan (or a monitor's search naming its listing) "
        "processes in the listings archive, so that objects reported later are checked against past listings."
    )
    archive_retention_days: float = Field(
        default=1825, ge=0, description="Days an archived listing photo is kept after it was last seen (0: forever)."
    )
    archive_copy_px: int = Field(
        default=800, ge=128, description="Longest side of the downsized copy of each archived listing photo (enough to "
        "verify a candidate again and to show it to a person)."
    )
    archive_keep_full: bool = Field(default=False, description="Also keep each archived listing photo in full.")
    archive_ann_min_vectors: int = Field(
        default=50_000, ge=0, description="Archived photos from which the archive's index is compressed (IVF-PQ with "
        "exact re-ranking) instead of exact flat search; 0 keeps it exact at any size."
    )
    retrohunt_candidates: int = Field(
        default=20, ge=1, description="Archived listing photos verified for each new registry photo in a retro-hunt."
    )
    webhook_timeout_s: float = Field(default=10, gt=0, description="Seconds one webhook delivery may take in all.")
    webhook_retry_hours: float = Field(
        default=24, gt=0, description="Hours a failing webhook delivery is retried, with exponential back-off."
    )
    webhook_allow_private: bool = Field(
        default=False, description="Webhook endpoints may be on loopback, private or link-local addresses, and over "
        "plain http (tests, a receiver on the same host). Off: https to public addresses only."
    )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        return int(max(self.max_request_mb, self.max_upload_mb) * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    return Settings()
