"""MatchingService: registration, index reconciliation at start, model mismatch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.core.errors import BadImage, IndexModelMismatch
from app.pipeline.retrieve import INDEX_FILE, VectorIndex
from app.service import MatchingService, PhotoInput
from tests.conftest import jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


def register(service, n, start=0):
    for i in range(start, start + n):
        service.register_artefact({"inventory_number": f"A-{i}", "institution": "X"},
                                  [PhotoInput(jpeg_bytes(random_photo(i)), view="front")])


def test_registration_stores_rows_files_and_vectors(service):
    register(service, 3)
    assert service.store.count_artefacts() == 3
    assert service.index.count == 3
    assert len(service.store.photos.all_files()) == 3
    ids, vecs = service.store.vectors(service.fingerprint)
    assert len(ids) == 3 and vecs.shape == (3, 1280)


def test_a_bad_photo_registers_nothing(service):
    with pytest.raises(BadImage, match="second.jpg"):
        service.register_artefact({"inventory_number": "B-1"},
                                  [PhotoInput(jpeg_bytes(random_photo(1))), PhotoInput(b"junk", label="second.jpg")])
    assert service.store.count_artefacts() == 0 and service.index.count == 0


def test_missing_index_is_rebuilt_from_stored_vectors(settings, encoder, service):
    register(service, 4)
    query = jpeg_bytes(random_photo(2))
    before = service.search(query).results[0].artefact_id
    (settings.data_dir / INDEX_FILE).unlink()
    restarted = MatchingService(settings, encoder=encoder).start()
    assert restarted.index.count == 4
    assert restarted.search(query).results[0].artefact_id == before
    restarted.close()


def test_index_out_of_step_with_registry_is_reconciled(settings, encoder, service):
    register(service, 3)
    stale = VectorIndex.build(service.fingerprint, np.array([999]), np.ones((1, 1280), np.float32) / 35.78, 1280)
    stale.save(settings.data_dir)
    restarted = MatchingService(settings, encoder=encoder).start()
    assert sorted(restarted.index.ids()) == sorted(restarted.store.photo_ids())
    restarted.close()


def test_index_of_another_model_is_refused_with_the_fix(settings, encoder, service):
    register(service, 2)
    other = VectorIndex.build("clip:ViT-B-32:x@0123456789ab", np.array([1, 2]), np.eye(2, 512, dtype=np.float32), 512)
    other.save(settings.data_dir)
    restarted = MatchingService(settings, encoder=encoder).start()
    with pytest.raises(IndexModelMismatch, match=r"heritage-match index rebuild"):
        restarted.search(jpeg_bytes(random_photo(1)))
    report = restarted.rebuild_index()
    assert report.vectors == 2
    assert restarted.search(jpeg_bytes(random_photo(1))).results[0].inventory_number == "A-1"
    restarted.close()


def test_rebuild_reembed_embeds_photos_lacking_vectors(settings, encoder, service):
    register(service, 2)
    with service.store.sessions.begin() as s:
        from app.registry.models import Embedding

        s.query(Embedding).delete()
    (settings.data_dir / INDEX_FILE).unlink()
    restarted = MatchingService(settings, encoder=encoder).start()
    assert restarted.index.count == 0
    report = restarted.rebuild_index(reembed=True)
    assert report.embedded == 2 and report.vectors == 2 and report.missing == 0
    restarted.close()


def test_verdict_follows_thresholds(settings, encoder):
    strict = MatchingService(settings.model_copy(update={"match_threshold": 0.99, "possible_threshold": 0.5}),
                             encoder=encoder).start()
    register(strict, 2)
    # A crop, so the search goes past the exact re-use check to embedding and verification.
    results = strict.search(jpeg_bytes(random_photo(0).crop((20, 10, 300, 230)), quality=95)).results
    assert results[0].inventory_number == "A-0"
    assert results[0].verdict in ("match", "possible")
    assert results[1].verdict == "no_match"
    strict.close()


def test_two_processes_on_one_data_dir_see_each_others_changes(settings, encoder, service):
    """Like two uvicorn workers, or the CLI importing while the server runs."""
    other = MatchingService(settings, encoder=encoder).start()
    register(service, 1, start=0)
    register(other, 1, start=1)  # must not drop A-0 from the saved index
    assert other.search(jpeg_bytes(random_photo(0))).results[0].inventory_number == "A-0"
    assert service.search(jpeg_bytes(random_photo(1))).results[0].inventory_number == "A-1"
    other.delete_artefact(other.store.find_artefact("X", "A-0").id)
    assert all(r.inventory_number != "A-0" for r in service.search(jpeg_bytes(random_photo(0))).results)
    saved = VectorIndex.load(settings.data_dir)
    assert sorted(saved.ids()) == sorted(service.store.photo_ids())
    other.close()


def test_duplicate_inventory_number_leaves_no_photo_file(service):
    register(service, 1)
    files = set(service.store.photos.all_files())
    from app.core.errors import Conflict

    with pytest.raises(Conflict):
        service.register_artefact({"inventory_number": "A-0", "institution": "X"},
                                  [PhotoInput(jpeg_bytes(random_photo(50)))])
    assert set(service.store.photos.all_files()) == files and service.index.count == 1


def test_photos_without_signatures_get_them_on_first_search_or_backfill(service):
    from sqlalchemy import delete

    from app.registry.models import PhotoSignature

    register(service, 3)
    with service.store.sessions.begin() as s:
        s.execute(delete(PhotoSignature))
    assert len(service.store.photos_missing_signatures()) == 3
    # Search still verifies: the candidates' signatures are computed on the way.
    first = service.search(jpeg_bytes(random_photo(1).crop((10, 10, 300, 220)), quality=90)).results[0]
    assert first.inventory_number == "A-1" and first.evidence.colour is not None
    remaining = service.store.photos_missing_signatures()
    assert service.backfill_signatures(remaining) == len(remaining)
    assert service.store.photos_missing_signatures() == []


def test_signatures_of_an_older_version_still_find_reuse_and_are_recomputed(service):
    from sqlalchemy import select, update

    from app.registry.models import SIGNATURE_VERSION, PhotoSignature

    register(service, 3)
    # As an upgrade finds them: the hash is still good, the colours are in an older layout.
    with service.store.sessions.begin() as s:
        s.execute(update(PhotoSignature).values(version=SIGNATURE_VERSION - 1, colour=b"\x00\x3c" * 52))
    assert len(service.store.photos_missing_signatures()) == 3
    response = service.search(jpeg_bytes(random_photo(2).resize((200, 150)), quality=40))
    assert [r.inventory_number for r in response.results] == ["A-2"] and response.results[0].evidence.exact_reuse
    with service.store.sessions() as s:
        versions = dict(s.execute(select(PhotoSignature.photo_id, PhotoSignature.version)).all())
    assert sorted(versions.values()) == [SIGNATURE_VERSION - 1, SIGNATURE_VERSION - 1, SIGNATURE_VERSION]


def test_a_reused_registry_photo_is_found_by_its_hash_alone(service):
    register(service, 3)
    copy = random_photo(2).resize((200, 150))
    response = service.search(jpeg_bytes(copy, quality=40))
    assert [r.inventory_number for r in response.results] == ["A-2"]
    assert response.results[0].evidence.exact_reuse and response.results[0].verdict == "match"


def test_an_analysis_computed_beforehand_gives_the_same_answer(service, coins):
    """Scans analyse photos (signature, keypoints, proposals) in their decode workers: same results."""
    import dataclasses
    import random

    from app.pipeline.signature import analyse_photo
    from tests.conftest import coin_query

    for i, crop in enumerate(coins[:6]):
        service.register_artefact({"inventory_number": f"C-{i}"}, [PhotoInput(jpeg_bytes(crop.image))])
    rng = random.Random(5)
    queries = ([service.decode(coin_query(c.image, rng)) for c in coins[:6]]
               + [service.decode(jpeg_bytes(random_photo(9)))])
    analysed = [dataclasses.replace(d, analysis=analyse_photo(d.image, proposals=True)) for d in queries]

    def answers(responses):
        return [[r.model_dump() for r in resp.results] for resp in responses]

    plain = answers(service.search_images(queries, top_k=5))
    assert plain == answers(service.search_images(analysed, top_k=5))
    assert [a[0]["inventory_number"] for a in plain[:6]] == [f"C-{i}" for i in range(6)]


def object_on_backdrop(seed: int) -> Image.Image:
    """A textured object in the middle of a plain backdrop: its box is a fifth of the frame."""
    photo = Image.new("RGB", (640, 480), (40, 60, 150))
    photo.paste(random_photo(seed, size=(240, 200)), (200, 140))
    return photo


def filling_the_frame(seed: int) -> Image.Image:
    """A photo with no backdrop to tell an object from: the object fills the frame."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (360, 480, 3), dtype=np.uint8))


def object_views(service) -> dict[int, np.ndarray]:
    from app.registry.models import object_fingerprint

    photo_ids = [int(i) for i in service.store.photo_ids()]
    return service.store.vectors_of(object_fingerprint(service.fingerprint), photo_ids)


def test_registration_stores_each_photos_object_view(service):

    service.register_artefact({"inventory_number": "O-1"}, [PhotoInput(jpeg_bytes(object_on_backdrop(3)))])
    service.register_artefact({"inventory_number": "F-1"}, [PhotoInput(jpeg_bytes(filling_the_frame(1)))])
    views = object_views(service)
    assert sorted(v.size for v in views.values()) == [0, 1280]
    assert abs(float(np.linalg.norm(max(views.values(), key=len))) - 1) < 1e-4
    # Object views are not a model of their own, and the index holds whole frames only.
    assert list(service.store.fingerprints()) == [service.fingerprint] and service.index.count == 2
    assert service.photos_missing_object_views() == []


def test_a_search_compares_its_regions_with_the_object_views(service, encoder):
    from app.registry.models import object_fingerprint

    service.register_artefact({"inventory_number": "O-1"}, [PhotoInput(jpeg_bytes(object_on_backdrop(3)))])
    register(service, 3)
    photo_id = int(service.store.photo_ids()[0])
    view = service.store.vectors_of(object_fingerprint(service.fingerprint), [photo_id])[photo_id]
    frame = service.store.vectors_of(service.fingerprint, [photo_id])[photo_id]
    # The object alone, closer in and on no backdrop: nearer the registry photo's object view than its frame.
    query = random_photo(3, size=(240, 200)).resize((480, 400))
    q = encoder.embed([query])[0]
    assert float(q @ view) > float(q @ frame) + 0.05
    first = service.search(jpeg_bytes(query, quality=90)).results[0]
    assert first.inventory_number == "O-1" and first.evidence.cosine >= float(q @ view) - 0.01


def test_reembed_gives_photos_registered_before_object_views_theirs(service):
    from sqlalchemy import delete

    from app.registry.models import Embedding, object_fingerprint

    service.register_artefact({"inventory_number": "O-1"}, [PhotoInput(jpeg_bytes(object_on_backdrop(3)))])
    service.register_artefact({"inventory_number": "F-1"}, [PhotoInput(jpeg_bytes(filling_the_frame(1)))])
    with service.store.sessions.begin() as s:
        s.execute(delete(Embedding).where(Embedding.model_fingerprint == object_fingerprint(service.fingerprint)))
    assert len(service.photos_missing_object_views()) == 2
    report = service.rebuild_index(reembed=True)
    assert report.failed == 0 and service.photos_missing_object_views() == []
    views = object_views(service)
    assert sorted(v.size for v in views.values()) == [0, 1280]
