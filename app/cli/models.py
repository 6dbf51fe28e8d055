"""``models list``, ``models fetch`` and ``models export``: the weights and exports of the embedding models.

The work is the models' own (``app.embedding.models``, ``app.embedding.export``); here it is said to the user.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from app.cli.console import console, fail, show
from app.core.config import get_settings
from app.core.errors import ConfigError, ModelUnavailable


def models_list() -> None:
    """The models this installation can use and whether their weights are present."""
    from app.embedding import OFFLINE_MODELS, resolve_model
    from app.embedding.models.clip import ClipSpec, find_clip_weights
    from app.embedding.models.efficientnet import efficientnet_weights

    settings = get_settings()
    table = Table(title=f"models (HM_MODEL={settings.model} -> {resolve_model(settings)})")
    table.add_column("model")
    table.add_column("weights")
    for name in OFFLINE_MODELS:
        try:
            eff: str | None = str(efficientnet_weights(name))
        except ModelUnavailable:
            eff = None
        table.add_row(name, eff or "[red]not installed[/red]")
    clip = ClipSpec.parse(settings.clip_default)
    found = find_clip_weights(clip, settings.models_dir)
    table.add_row(settings.clip_default,
                  str(found) if found else "[yellow]missing: heritage-match models fetch[/yellow]")
    show(table)


def models_fetch(
    model: Optional[str] = typer.Argument(None, help="clip:<architecture>:<tag>; default HM_CLIP_DEFAULT."),
) -> None:
    """Download CLIP weights into the models directory (needs internet: run it on a connected machine)."""
    from app.embedding import OFFLINE_MODEL
    from app.embedding.models.clip import ClipSpec, download_clip_weights, find_clip_weights

    settings = get_settings()
    spec = ClipSpec.parse(model or settings.clip_default)
    if spec.is_file:
        fail("give a pretrained tag (clip:ViT-B-32:laion2b_s34b_b79k), not a file path")
    found = find_clip_weights(spec, settings.models_dir)
    if found:
        console.print(f"already present: {found}")
        return
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = download_clip_weights(spec, settings.models_dir)
    except ConfigError as exc:  # a tag open_clip does not know
        fail(exc.message)
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
            f"Until then HM_MODEL=auto uses the offline model {OFFLINE_MODEL}."
        )
        raise typer.Exit(1)
    console.print(f"fetched: {path}")


def models_export(
    int8: bool = typer.Option(False, "--int8", help="Also quantise the weights to int8 (per channel): faster, "
                              "its own fingerprint, needs HM_RUNTIME=onnx-int8."),
    openvino: bool = typer.Option(False, "--openvino", help="Check OpenVINO on the fp32 export (made if missing) "
                                  "for HM_RUNTIME=openvino: same vectors as torch."),
) -> None:
    """Export the active model (HM_MODEL) to ONNX for HM_RUNTIME=onnx, checked against torch on real photos."""
    from app.embedding import create_torch_encoder, resolve_model
    from app.embedding.export import ExportRefused, export_onnx, export_openvino

    if int8 and openvino:
        fail("OpenVINO runs the fp32 export: use --int8 and --openvino one at a time.")
    settings = get_settings().model_copy(update={"runtime": "torch", "device": "cpu"})
    model = resolve_model(settings)
    encoder = create_torch_encoder(settings.model_copy(update={"model": model}))
    try:
        if openvino:
            meta = export_openvino(encoder, model, settings.models_dir)
        else:
            meta = export_onnx(encoder, model, settings.models_dir, int8=int8)
    except ExportRefused as exc:
        fail(str(exc))
    path = settings.models_dir / "onnx"
    console.print(f"exported {model} ({meta['runtime']}) into {path}/: cosine to torch "
                  f"{meta['parity']['cosine_min']:.5f} at worst on {meta['parity']['images']} photos. "
                  f"Use it with HM_RUNTIME={meta['runtime']}.")
