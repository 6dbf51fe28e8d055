"""CLIP image tower through open_clip: the product's main model.

Weights always load from a local file (``pretrained=<path>``): either a checkpoint the operator
names, or the file ``heritage-match models fetch`` placed in the models directory. The service
itself never downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.errors import ConfigError, ModelUnavailable
from app.embedding.base import ImageEncoder
from app.embedding.preprocess import Preprocessing
from app.embedding.runtimes.torch_inference import run_module

# open_clip's defaults for checkpoints without a pretrained config (OpenAI's CLIP statistics).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ClipSpec:
    architecture: str
    pretrained: str  # an open_clip pretrained tag, or a path to a local checkpoint file

    @classmethod
    def parse(cls, spec: str) -> "ClipSpec":
        parts = spec.split(":", 2)
        if len(parts) != 3 or parts[0] != "clip" or not parts[1] or not parts[2]:
            raise ConfigError(
                f"CLIP model must be written clip:<architecture>:<pretrained tag or checkpoint path>, got {spec!r}"
            )
        return cls(parts[1], parts[2])

    @property
    def is_file(self) -> bool:
        return "/" in self.pretrained or Path(self.pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")

    def hf_repo(self) -> tuple[str, str] | None:
        """(repo id, filename) on the Hugging Face hub for a pretrained tag, if open_clip knows one."""
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.architecture, self.pretrained)
        hub = (cfg or {}).get("hf_hub", "")
        if not hub:
            return None
        repo, filename = hub.rstrip("/"), ""
        if not hub.endswith("/"):
            repo, filename = hub.rsplit("/", 1)
        return repo, filename

    def download_url(self) -> str | None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.architecture, self.pretrained) or {}
        if cfg.get("url"):
            return cfg["url"]
        hf = self.hf_repo()
        if hf:
            return f"https://huggingface.co/{hf[0]}/resolve/main/{hf[1] or HF_FILENAMES[1]}"
        return None


def find_clip_weights(spec: ClipSpec, models_dir: Path) -> Path | None:
    """The local weights file for ``spec``, looked up in the models dir then open_clip's cache."""
    if spec.is_file:
        path = Path(spec.pretrained).expanduser()
        return path if path.is_file() else None
    try:
        hf = spec.hf_repo()
    except Exception:
        return None
    if hf is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = hf
    names = (filename,) if filename else HF_FILENAMES
    for cache_dir in (str(models_dir), None):
        for name in names:
            try:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            except Exception:
                found = None
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    return None


def download_clip_weights(spec: ClipSpec, models_dir: Path) -> Path:
    """Download the pretrained weights of ``spec`` into ``models_dir`` (a Hugging Face cache there, where
    find_clip_weights looks): the one download of the product, run by `heritage-match models fetch`.
    ConfigError for a tag open_clip does not know; ConnectionError or the download's own error when offline."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
    if not cfg:
        raise ConfigError(f"open_clip knows no pretrained weights {spec.pretrained!r} for {spec.architecture}")
    check_hub_reachable()
    return Path(open_clip.download_pretrained(cfg, cache_dir=str(models_dir)))


def check_hub_reachable(timeout_s: float = 5.0) -> None:
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


def preprocessing_for(spec: ClipSpec) -> Preprocessing:
    import open_clip

    model_cfg = open_clip.get_model_config(spec.architecture)
    if model_cfg is None:
        raise ConfigError(f"Unknown CLIP architecture {spec.architecture!r}; see `heritage-match models list`.")
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    cfg = {} if spec.is_file else (open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained) or {})
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"resize mode {mode!r} of {spec.architecture} is not supported")
    return Preprocessing(
        size=int(size),
        mode=mode,
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


class ClipEncoder(ImageEncoder):
    match_threshold = 0.90
    possible_threshold = 0.80

    def __init__(self, spec: ClipSpec, models_dir: Path, device: str = "cpu", batch_size: int = 16):
        super().__init__(preprocessing_for(spec), device=device, batch_size=batch_size)
        self.spec = spec
        self.models_dir = Path(models_dir)
        self.name = f"clip:{spec.architecture}:{Path(spec.pretrained).name if spec.is_file else spec.pretrained}"
        import open_clip

        self.dim = int(open_clip.get_model_config(spec.architecture)["embed_dim"])
        self._visual = None

    def weights_path(self) -> Path:
        path = find_clip_weights(self.spec, self.models_dir)
        if path is None and self.spec.is_file:
            raise ModelUnavailable(f"The checkpoint file {self.spec.pretrained} does not exist: check HM_MODEL "
                                   f"(clip:{self.spec.architecture}:<path to checkpoint>).")
        if path is None:
            raise ModelUnavailable(
                f"No weights for {self.spec.architecture} / {self.spec.pretrained} in {self.models_dir}. "
                "Run `heritage-match models fetch` on a connected machine and copy the models/ folder here, "
                "or set HM_MODEL=clip:<architecture>:<path to checkpoint>."
            )
        return path

    def _load(self) -> None:
        import open_clip

        weights = self.weights_path()
        try:
            model = open_clip.create_model(self.spec.architecture, pretrained=str(weights), device=self.device)
        except Exception as exc:  # a truncated download, another architecture's weights, not a checkpoint at all
            raise ModelUnavailable(f"{weights} is not a readable {self.spec.architecture} checkpoint "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                                   "Fetch or copy the weights again.") from exc
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        if cfg.get("size") and tuple(cfg["size"])[0] != self.preprocessing.size:
            raise ConfigError(f"model expects {cfg['size']} input, preprocessing gives {self.preprocessing.size}")
        self._visual = model.visual.eval()

    def export_module(self):
        self.load()
        return self._visual

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return run_module(self._visual, batch, self.device)  # fp16 or TF32 on CUDA (torch_inference)
