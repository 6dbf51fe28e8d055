"""The CLIP path, with random ViT-B-32 weights saved as a checkpoint and loaded the way users load
real ones (``HM_MODEL=clip:ViT-B-32:<file>`` -> ``pretrained=<file>``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.embedding import create_encoder, resolve_model
from app.embedding.models.clip import ClipEncoder, ClipSpec, preprocessing_for
from tests.conftest import random_photo

ARCH = "ViT-B-32"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)  # random weights: no download here
    path = tmp_path_factory.mktemp("clip") / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def clip_encoder(checkpoint, tmp_path_factory):
    settings = Settings(model=f"clip:{ARCH}:{checkpoint}", models_dir=tmp_path_factory.mktemp("models"), device="cpu")
    enc = create_encoder(settings)
    assert isinstance(enc, ClipEncoder)
    return enc.load()


def test_embeddings_have_the_model_dimension_and_unit_length(clip_encoder):
    vecs = clip_encoder.embed([random_photo(i) for i in range(3)])
    assert vecs.shape == (3, 512) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])


def test_embedding_is_deterministic_and_batch_independent(clip_encoder):
    photos = [random_photo(10), random_photo(11)]
    one = clip_encoder.embed_one(photos[0])
    both = clip_encoder.embed(photos)
    np.testing.assert_allclose(one, clip_encoder.embed_one(photos[0]), atol=1e-6)
    np.testing.assert_allclose(one, both[0], atol=1e-5)


def test_fingerprint_names_model_weights_and_preprocessing(clip_encoder, checkpoint):
    import hashlib

    fp = clip_encoder.fingerprint
    assert fp.name == f"clip:{ARCH}:{checkpoint.name}"
    assert fp.weights_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert fp.dim == 512 and "shortest:224:bicubic" in fp.preprocessing
    assert fp.id.startswith(fp.name + "@")


def test_other_weights_give_another_fingerprint(checkpoint, tmp_path, clip_encoder):
    import open_clip

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(ARCH).state_dict(), other)
    enc = ClipEncoder(ClipSpec(ARCH, str(other)), tmp_path)
    assert enc.fingerprint.id != clip_encoder.fingerprint.id


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (300, 1000), (97, 53), (1001, 999)])
def test_preprocessing_equals_open_clip_transform(checkpoint, size):
    import open_clip

    _, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint))
    ours = preprocessing_for(ClipSpec(ARCH, str(checkpoint)))
    img = random_photo(sum(size), size)
    expected = transform(img).numpy()
    np.testing.assert_allclose(ours(img), expected, atol=1e-6)


def test_preprocessing_of_a_pretrained_tag_follows_its_config():
    pre = preprocessing_for(ClipSpec(ARCH, "laion2b_s34b_b79k"))
    assert pre.size == 224 and pre.mode == "shortest" and pre.interpolation == "bicubic"


def test_missing_weights_say_how_to_get_them(tmp_path):
    enc = ClipEncoder(ClipSpec(ARCH, "laion2b_s34b_b79k"), tmp_path)
    with pytest.raises(ModelUnavailable, match="models fetch"):
        enc.weights_path()


def test_auto_falls_back_to_the_offline_model_without_clip_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    settings = Settings(model="auto", models_dir=tmp_path / "models")
    with caplog.at_level("WARNING"):
        assert resolve_model(settings) == "efficientnet-lite1"
    assert "offline model" in caplog.text


def test_auto_picks_clip_when_its_weights_are_in_models_dir(tmp_path, checkpoint):
    # The layout `models fetch` leaves behind: a Hugging Face cache inside models/.
    snap = tmp_path / "models" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    refs = snap.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    settings = Settings(model="auto", models_dir=tmp_path / "models")
    assert resolve_model(settings) == "clip:ViT-B-32:laion2b_s34b_b79k"


def test_bad_model_spec_is_refused():
    with pytest.raises(ValueError, match="clip:<architecture>"):
        ClipSpec.parse("clip:ViT-B-32")
    with pytest.raises(ValueError, match="Unknown model"):
        create_encoder(Settings(model="resnet"))
