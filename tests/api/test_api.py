"""The HTTP API end to end, with the real offline model."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from app.jobs.demo import seed_demo
from app.main import create_app
from tests.conftest import bearer, coin_query, jpeg_bytes, png_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def client(settings, service, make_key):
    with TestClient(create_app(settings, service=service), headers=bearer(make_key("admin"))) as c:
        yield c


@pytest.fixture
def demo_client(client, service):
    seed_demo(service)
    return client


def test_health_reports_model_and_index(client, service):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["model"]["name"] == "efficientnet-lite0"
    assert body["model"]["fingerprint"] == service.fingerprint
    assert body["index"]["matches_model"] is True
    assert client.get("/readyz").status_code == 200


def test_demo_coins_found_first_under_query_transform(demo_client, coins):
    rng = random.Random(2026)
    found = 0
    for coin in coins:
        r = demo_client.post("/v1/search", files={"image": ("q.jpg", coin_query(coin.image, rng), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["name"] == "efficientnet-lite0"
        first = body["results"][0]
        assert set(first) >= {"artefact_id", "inventory_number", "title", "status", "score", "verdict", "photo_id"}
        found += first["inventory_number"] == coin.inventory_number
    assert found == 24, f"only {found}/24 coins found first"


def test_a_lot_of_two_coins_finds_both_and_says_where(demo_client, coins):
    """Two coins photographed together: both are found, each with the box where it lies."""
    from app.jobs.listing_transforms import lot

    left, right = coins[4], coins[17]
    photo = lot([left.image.resize((300, 300)), right.image.resize((300, 300))], random.Random(3))
    r = demo_client.post("/v1/search", files={"image": ("lot.jpg", jpeg_bytes(photo, quality=85), "image/jpeg")})
    body = r.json()
    found = {x["inventory_number"]: x for x in body["results"][:3]}
    assert {left.inventory_number, right.inventory_number} <= set(found), body["results"]
    middle = body["query"]["width"] / 2
    for coin, on_left in ((left, True), (right, False)):
        box = found[coin.inventory_number]["region"]
        assert box is not None and box["x1"] > box["x0"] and box["y1"] > box["y0"]
        centre = (box["x0"] + box["x1"]) / 2
        assert (centre < middle) == on_left, (coin.inventory_number, box)


def test_exact_registry_photo_is_a_match(demo_client, coins):
    r = demo_client.post("/v1/search", files={"image": ("c.png", png_bytes(coins[0].image), "image/png")},
                         data={"top_k": "3"})
    body = r.json()
    # The registry photo itself is found by its perceptual hash, before any neural work.
    assert [x["inventory_number"] for x in body["results"]] == [coins[0].inventory_number]
    assert body["results"][0]["verdict"] == "match"
    assert body["results"][0]["evidence"]["exact_reuse"] is True
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert body["query"]["width"] == coins[0].image.width


def test_a_match_says_what_it_rests_on_and_a_twin_is_not_one(demo_client, coins):
    from app.jobs.listing_transforms import perspective, twin

    coin = coins[3]
    listed = perspective(coin.image.resize((480, 480)), random.Random(5))
    body = demo_client.post("/v1/search", files={"image": ("l.jpg", jpeg_bytes(listed, quality=85), "image/jpeg")}
                            ).json()
    top = body["results"][0]
    assert top["inventory_number"] == coin.inventory_number and top["verdict"] == "match", top
    ev = top["evidence"]
    assert ev["inliers"] >= 12 and ev["coverage"] >= 0.35 and ev["surface"] >= 0.85 and ev["surface_cells"] >= 6
    assert "keypoints agree over" in ev["summary"] and "aligned surface agrees" in ev["summary"]

    donor = coins[9].image
    altered = twin(coin.image.resize((480, 480)), random.Random(2), donor=donor, kind="label")
    body = demo_client.post("/v1/search", files={"image": ("t.jpg", jpeg_bytes(altered, quality=90), "image/jpeg")}
                            ).json()
    assert all(r["verdict"] != "match" for r in body["results"]), body["results"][:2]
    top = body["results"][0]
    assert top["inventory_number"] == coin.inventory_number  # it is found, as a possible match...
    assert "aligned surface differs" in top["evidence"]["summary"]  # ...and the evidence says why not more


def test_artefact_crud_and_photo_indexing(client):
    r = client.post("/v1/artefacts", json={"inventory_number": "GZ-001", "institution": "Gaza Museum",
                                           "title": "Oil lamp", "object_type": "lamp", "status": "looted",
                                           "materials": "terracotta", "height": 4.5, "dimension_unit": "cm"})
    assert r.status_code == 201, r.text
    art = r.json()
    assert art["photos"] == [] and art["status"] == "looted"
    dup = client.post("/v1/artefacts", json={"inventory_number": "GZ-001", "institution": "Gaza Museum"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"

    photo = jpeg_bytes(random_photo(1))
    r = client.post(f"/v1/artefacts/{art['id']}/photos",
                    files=[("image", ("a.jpg", photo, "image/jpeg")),
                           ("image", ("b.png", png_bytes(random_photo(2)), "image/png"))],
                    data={"view": "front"})
    assert r.status_code == 201, r.text
    photos = r.json()
    assert len(photos) == 2 and all(p["indexed"] for p in photos) and photos[0]["view"] == "front"

    assert client.get(photos[0]["url"]).content == photo
    thumb = client.get(photos[0]["url"] + "?size=thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # Photos are case material: never kept in a (shared PC's) browser cache.
    assert client.get(photos[0]["url"]).headers["cache-control"] == thumb.headers["cache-control"] == "no-store"

    hit = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()["results"][0]
    assert hit["artefact_id"] == art["id"] and hit["photo_id"] == photos[0]["id"]

    r = client.patch(f"/v1/artefacts/{art['id']}", json={"status": "recovered", "title": "Roman oil lamp"})
    assert r.json()["status"] == "recovered" and r.json()["materials"] == "terracotta"
    # A record keeps its inventory number and status; a measurement must be a finite number.
    for body in ({"status": None}, {"inventory_number": None}, {"height": "Infinity"}, {"weight": "NaN"}):
        r = client.patch(f"/v1/artefacts/{art['id']}", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (body, r.text)
    assert client.patch(f"/v1/artefacts/{art['id']}", json={"institution": None}).json()["institution"] == ""
    r = client.post("/v1/artefacts", content=b'{"inventory_number": "INF-1", "height": 1e400}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text

    page = client.get("/v1/artefacts", params={"status": "recovered"}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == art["id"]
    assert client.get("/v1/artefacts", params={"q": "ROMAN"}).json()["total"] == 1
    assert client.get("/v1/artefacts", params={"institution": "Other"}).json()["total"] == 0
    assert client.get("/v1/artefacts", params={"type": "lamp"}).json()["total"] == 1

    assert client.delete(f"/v1/artefacts/{art['id']}").status_code == 204
    assert client.get(f"/v1/artefacts/{art['id']}").status_code == 404
    assert client.get(photos[0]["url"]).status_code == 404
    results = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()["results"]
    assert all(r["artefact_id"] != art["id"] for r in results)


@pytest.mark.parametrize(
    "payload, status, code",
    [
        (b"", 422, "bad_image"),
        (b"this is text, not a photo", 422, "bad_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, 422, "bad_image"),
    ],
)
def test_bad_uploads_get_clear_errors(client, payload, status, code):
    r = client.post("/v1/search", files={"image": ("x.jpg", payload, "image/jpeg")})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_truncated_jpeg_is_refused(client):
    data = jpeg_bytes(random_photo(3, (640, 480)))
    r = client.post("/v1/search", files={"image": ("t.jpg", data[: len(data) // 2], "image/jpeg")})
    assert r.status_code == 422 and "damaged or truncated" in r.json()["error"]["message"]


def test_upload_over_limit_is_refused(settings, encoder):
    from app.security.keys import KeyStore
    from app.service import MatchingService

    small = MatchingService(settings.model_copy(update={"max_upload_mb": 0.01}), encoder=encoder)
    admin = KeyStore(small.store.sessions).create("admin", "admin").token
    with TestClient(create_app(service=small), headers=bearer(admin)) as c:
        # Over the limit but under the request-size guard: refused while reading the file.
        r = c.post("/v1/search", files={"image": ("big.png", b"\x89PNG" + b"0" * 20_000, "image/png")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        # Far over: refused from Content-Length before the body is parsed.
        r = c.post("/v1/search", files={"image": ("big.png", b"0" * 3_000_000, "image/png")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        r = c.post("/v1/search?top_k=1000", files={"image": ("q.png", b"\x89PNG", "image/png")})
        assert r.status_code == 422
    # Every refused search is in the audit trail under its key, however early it was refused.
    from app.security.audit import AuditLog

    searches = [(e.key_name, e.outcome) for e in AuditLog(small.store.sessions).events() if e.action == "search"]
    assert searches == [("admin", "image_too_large"), ("admin", "image_too_large"), ("admin", "validation_error")]
    small.close()


def test_missing_file_field_and_unknown_routes(client):
    r = client.post("/v1/search", json={"image": "http://example.org/x.jpg"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert client.get("/v1/artefacts/999").json()["error"]["code"] == "not_found"
    assert client.get("/v1/photos/999").status_code == 404
    assert client.post("/v1/artefacts/999/photos", files={"image": ("a.jpg", b"x", "image/jpeg")}).status_code == 404


def test_openapi_lists_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/search", "/v1/artefacts", "/v1/artefacts/{artefact_id}", "/v1/artefacts/{artefact_id}/photos",
              "/v1/photos/{photo_id}", "/healthz", "/readyz"):
        assert p in paths
    # What the endpoints answer besides success is in the schema too.
    assert {"400", "413", "422"} <= set(paths["/v1/artefacts/{artefact_id}/photos"]["post"]["responses"])
    ready = paths["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(ready) and "Readiness" in str(ready["503"])


def test_readyz_says_not_ready_with_its_schema_while_the_index_is_of_another_model(client, service):
    from app.schemas import IndexStatus, Readiness

    with pytest.MonkeyPatch.context() as m:
        m.setattr(type(service), "index_status", lambda self: IndexStatus(loaded=True, matches_model=False))
        r = client.get("/readyz")
    assert r.status_code == 503 and Readiness.model_validate(r.json()).ready is False


def test_more_photos_than_one_request_takes_is_refused_as_documented(client):
    art = client.post("/v1/artefacts", json={"inventory_number": "MANY"}).json()
    files = [("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(51)]
    r = client.post(f"/v1/artefacts/{art['id']}/photos", files=files)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_files"


def test_docs_page_needs_no_cdn(client):
    page = client.get("/docs").text
    assert "cdn." not in page and "swagger-ui-bundle.js" in page
    src = page.split('src="')[1].split('"')[0]
    assert client.get(src).status_code == 200
