"""The web interface, server side: sign-in, CSRF, what each role sees, languages, no external URLs."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.jobs.demo import seed_demo
from app.main import create_app
from app.security.audit import AuditLog
from app.security.keys import KeyStore
from app.web.pages import WEB_CSP
from tests.conftest import ROLES, bearer, coin_query, jpeg_bytes, png_bytes, random_photo

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def demo(service):
    seed_demo(service)
    return service


def csrf_of(client: TestClient, path: str = "/search") -> str:
    page = client.get(path)
    return CSRF.search(page.text).group(1)


def sign_in(client: TestClient, key: str, next: str = "/search"):
    token = csrf_of(client, "/signin")
    return client.post("/signin", data={"key": key, "csrf_token": token, "next": next}, follow_redirects=False)


@pytest.fixture
def browser_as(app, keys):
    """A signed-in client of a role (cookies kept across requests, as a browser does)."""
    clients = []

    def make(role: str) -> TestClient:
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        assert sign_in(client, keys[role]).status_code == 303
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def web_search(client: TestClient, photo: bytes, name: str = "q.jpg") -> str:
    """Search through the web form; returns the results page's path."""
    r = client.post("/search", data={"csrf_token": csrf_of(client)}, files={"image": (name, photo, "image/jpeg")},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"]


def test_sign_in_sets_a_signed_httponly_strict_cookie_without_the_key(app, keys, service):
    with TestClient(app) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/signin"
        assert client.get("/search", follow_redirects=False).headers["location"] == "/signin?next=%2Fsearch"
        r = sign_in(client, keys["officer"], next="/search")
        assert r.status_code == 303 and r.headers["location"] == "/search"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "hm_session=" in cookie
        value = client.cookies["hm_session"]
        assert keys["officer"] not in value
        payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
        assert set(payload) == {"s", "c", "k"} and isinstance(payload["k"], int)
        page = client.get("/search")
        assert page.status_code == 200 and "officer-key" in page.text
    signins = [e for e in AuditLog(service.store.sessions).events() if e.action == "web.signin"]
    assert [(e.key_name, e.role) for e in signins] == [("officer-key", "officer")]
        # Bad keys: refused with the form again, not signed in.
    with TestClient(app) as client:
        r = sign_in(client, "hm_not-a-key")
        assert r.status_code == 401 and "unknown or revoked" in r.text
        assert client.get("/search", follow_redirects=False).status_code == 303


def test_a_forged_or_tampered_cookie_is_not_a_session(app, keys, service):
    with TestClient(app) as client:
        sign_in(client, keys["admin"])
        value = client.cookies["hm_session"]
        payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
        payload["k"] = payload["k"] + 1  # another key's id, same signature
        forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        client.cookies.clear()
        client.cookies.set("hm_session", forged + "." + value.split(".", 1)[1])
        assert client.get("/registry", follow_redirects=False).status_code == 303
        client.cookies.clear()
        client.cookies.set("hm_session", value)
        assert client.get("/registry", follow_redirects=False).status_code == 200  # the real one still works


def test_wrong_keys_at_sign_in_are_slowed_per_address(settings, service, keys):
    guarded = create_app(settings.model_copy(update={"auth_failures_per_minute": 6, "auth_failures_burst": 3}),
                         service=service)
    with TestClient(guarded) as client:
        assert [sign_in(client, f"hm_wrong{n}").status_code for n in range(3)] == [401, 401, 401]
        r = sign_in(client, keys["officer"])  # even the right key waits: no guessing while blocked
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 10
        assert "Too many wrong keys" in r.text
        assert client.get("/search", follow_redirects=False).status_code == 303  # not signed in


def test_sign_in_redirects_only_within_the_site(app, keys):
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        with TestClient(app) as client:
            assert sign_in(client, keys["officer"], next=target).headers["location"] == "/search"
    with TestClient(app) as client:
        assert sign_in(client, keys["registrar"], next="/registry?q=coin").headers["location"] == "/registry?q=coin"


def test_forms_without_the_session_csrf_token_are_refused(app, keys, service, browser_as):
    with TestClient(app) as client:
        client.get("/signin")
        r = client.post("/signin", data={"key": keys["admin"], "csrf_token": "forged"}, follow_redirects=False)
        assert r.status_code == 403
        assert client.get("/search", follow_redirects=False).status_code == 303  # not signed in
    registrar = browser_as("registrar")
    other = browser_as("registrar")
    foreign = csrf_of(other, "/registry/new")  # valid, but another session's
    before = service.store.count_artefacts()
    for token in ("", "forged", foreign):
        r = registrar.post("/registry/new", data={"csrf_token": token, "inventory_number": "X-1"},
                           follow_redirects=False)
        assert r.status_code == 403 and "expired" in r.text
        r = registrar.post("/search", data={"csrf_token": token},
                           files={"image": ("q.jpg", jpeg_bytes(random_photo(1)), "image/jpeg")})
        assert r.status_code == 403
        assert registrar.post("/signout", data={"csrf_token": token}, follow_redirects=False).status_code == 403
    assert service.store.count_artefacts() == before
    with service.store.sessions() as s:
        from app.security.models import AuditEvent
        assert not s.query(AuditEvent).filter(AuditEvent.action == "search").count()
    # The token of the page works, and signing out ends the session: also for a copy of its cookie
    # taken before (a shared PC), which may neither read nor write.
    from app.web.session import COOKIE

    copied = registrar.cookies.get(COOKIE)
    token = csrf_of(registrar, "/registry/new")
    signed_out = registrar.post("/signout", data={"csrf_token": csrf_of(registrar)}, follow_redirects=False)
    assert signed_out.status_code == 303
    assert registrar.get("/search", follow_redirects=False).status_code == 303
    other.cookies.clear()
    other.cookies.set(COOKIE, copied)
    assert other.get("/registry", follow_redirects=False).status_code == 303
    r = other.post("/registry/new", data={"csrf_token": token, "inventory_number": "X-2", "status": "missing"},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert service.store.count_artefacts() == before


# Each web page and the roles whose keys may open it; the others get 403 (signed in) or a sign-in redirect.
WEB_MATRIX = {
    "/search": set(ROLES),
    "/registry": {"admin", "registrar"},
    "/registry/new": {"admin", "registrar"},
    "/registry/{artefact_id}": {"admin", "registrar"},
    "/photos/{photo_id}?size=large": {"admin", "registrar"},  # officer, monitor: only what they matched
}


@pytest.mark.parametrize("role", ROLES)
def test_pages_follow_the_role_of_the_key(role, app, service, browser_as):
    art = service.register_artefact({"inventory_number": "W-1"}, [])
    from app.service import PhotoInput

    photo = service.add_photos(art.id, [PhotoInput(jpeg_bytes(random_photo(5)))])[0]
    client = browser_as(role)
    for path, allowed in WEB_MATRIX.items():
        url = path.format(artefact_id=art.id, photo_id=photo.id)
        r = client.get(url, follow_redirects=False)
        assert r.status_code == (200 if role in allowed else 403), (role, url, r.status_code)
    nav = client.get("/search").text
    assert ('href="/registry"' in nav) == (role in {"admin", "registrar"})
    # Without a session every page sends the browser to sign in.
    with TestClient(app) as anonymous:
        for path in WEB_MATRIX:
            url = path.format(artefact_id=art.id, photo_id=photo.id)
            r = anonymous.get(url, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), url


def test_a_session_cookie_opens_no_v1_route(browser_as):
    client = browser_as("admin")
    for path in ("/v1/artefacts", "/v1/keys"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(random_photo(1)), "image/jpeg")})
    assert r.status_code == 401


def test_a_revoked_key_ends_its_sessions_at_once(app, keys, service, browser_as):
    client = browser_as("officer")
    assert client.get("/search").status_code == 200
    KeyStore(service.store.sessions).revoke("officer-key")
    assert client.get("/search", follow_redirects=False).status_code == 303


def test_web_search_is_the_audited_api_search(demo, coins, browser_as, app, keys):
    client = browser_as("officer")
    photo = coin_query(coins[6].image, random.Random(7))
    page = client.get(web_search(client, photo))
    assert page.status_code == 200
    found = re.findall(r'data-inventory="([^"]+)" data-verdict="([^"]+)"', page.text)
    assert found[0] == (coins[6].inventory_number, "match")
    # The same search through the API answers the same candidates.
    with TestClient(app, headers=bearer(keys["officer"])) as api:
        body = api.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()
    assert [(r["inventory_number"], r["verdict"]) for r in body["results"]] == found
    # Recorded like the API's: key, query SHA-256, results.
    events = [e for e in AuditLog(demo.store.sessions).events() if e.action == "search"]
    web_event = events[0]
    assert web_event.key_name == "officer-key" and web_event.query_sha256 == body["query"]["sha256"]
    assert [r.verdict for r in web_event.results] == [v for _, v in found]
    assert body["query"]["sha256"] in page.text
    # The officer now reads the matched record: Object ID fields and the registry photo.
    assert "Numismatics" in page.text and "Struck" in page.text and "Pompeii" in page.text
    match_photo = re.search(r'/photos/(\d+)\?size=large', page.text).group(1)
    assert client.get(f"/photos/{match_photo}?size=large").headers["content-type"] == "image/jpeg"


def test_case_report_carries_what_a_seizure_file_needs(demo, coins, browser_as, service):
    client = browser_as("officer")
    photo = coin_query(coins[2].image, random.Random(3))
    results = web_search(client, photo, name="seized.jpg")
    report = client.get(results + "/report")
    assert report.status_code == 200
    import hashlib

    text = report.text
    assert hashlib.sha256(photo).hexdigest() in text
    assert "officer-key" in text and "seized.jpg" in text
    assert service.model_info().fingerprint in text and "efficientnet-lite0" in text
    assert re.search(r'id="report-index-version">\d+<', text)
    assert "UTC" in text and coins[2].inventory_number in text and 'data-verdict="match"' in text
    # What each candidate rests on, and where in the photo it was found, are on paper too.
    assert "Where in the query photo" in text
    assert re.search(r"keypoints agree over \d+% of the object|The same photo as the registry|Looks alike", text)
    assert re.search(r"keypoints agree over \d+% of the object|The same photo as the registry|Looks alike",
                     client.get(results).text)
    assert "@media print" in client.get("/static/app.css").text
    query = client.get(results + "/query.jpg")
    assert query.status_code == 200 and query.headers["content-type"] == "image/jpeg"


def test_searches_are_visible_to_their_own_session_only(demo, coins, browser_as):
    first = browser_as("officer")
    results = web_search(first, coin_query(coins[0].image, random.Random(1)))
    second = browser_as("officer")  # the same key, signed in again: another session
    for suffix in ("", "/report", "/query.jpg"):
        assert first.get(results + suffix).status_code == 200
        assert second.get(results + suffix).status_code == 404
    assert second.get("/results/not-a-search").status_code == 404


def test_monitor_sees_matches_only_and_thumbnails(demo, coins, browser_as):
    client = browser_as("monitor")
    page = client.get(web_search(client, coin_query(coins[4].image, random.Random(4))))
    verdicts = re.findall(r'data-inventory="[^"]+" data-verdict="([^"]+)"', page.text)
    assert verdicts == ["match"]
    assert "size=large" not in page.text and "Struck" not in page.text  # no record for a monitor
    thumb = re.search(r'/photos/(\d+)\?size=thumb', page.text).group(1)
    assert client.get(f"/photos/{thumb}?size=thumb").status_code == 200
    assert client.get(f"/photos/{thumb}?size=large").status_code == 403
    assert client.get(f"/photos/{thumb}").status_code == 403


def test_search_errors_come_back_on_the_form(browser_as):
    client = browser_as("officer")
    token = csrf_of(client)
    r = client.post("/search", data={"csrf_token": token}, files={"image": ("x.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422 and "not a photo that can be read" in r.text
    r = client.post("/search", data={"csrf_token": token}, headers={"X-HM-Async": "1"})
    assert r.status_code == 422 and r.json()["error"] == "Choose or take a photo first."
    r = client.post("/search", data={"csrf_token": token}, headers={"X-HM-Async": "1", "Accept-Language": "fr"},
                    files={"image": ("x.jpg", b"zz", "image/jpeg")})
    assert "n'est pas une photo lisible" in r.json()["error"]
    # The page's script is told to sign in again when the session has ended, and why a request was refused.
    photo = {"image": ("q.jpg", jpeg_bytes(random_photo(3)), "image/jpeg")}
    r = client.post("/search", data={"csrf_token": "forged"}, files=photo, headers={"X-HM-Async": "1"})
    assert r.status_code == 403 and r.json()["error"]
    client.cookies.clear()
    r = client.post("/search", data={"csrf_token": token}, files=photo, headers={"X-HM-Async": "1"},
                    follow_redirects=False)
    assert r.status_code == 401 and r.json() == {"redirect": "/signin?next=%2Fsearch"}


def test_registrar_creates_edits_and_adds_photos(browser_as, service):
    client = browser_as("registrar")
    token = csrf_of(client, "/registry/new")
    photos = [("image", ("a.jpg", jpeg_bytes(random_photo(40)), "image/jpeg")),
              ("image", ("b.png", png_bytes(random_photo(41)), "image/png"))]
    r = client.post("/registry/new", data={"csrf_token": token, "inventory_number": "GAZA-7", "title": "Lamp",
                                           "status": "looted", "height": "12.5", "dimension_unit": "cm",
                                           "materials": "Terracotta", "view": "front"},
                    files=photos, follow_redirects=False)
    assert r.status_code == 303, r.text
    art_id = int(r.headers["location"].split("/")[2].split("?")[0])
    page = client.get(r.headers["location"])
    assert page.text.count('data-indexed="yes"') == 2 and "Saved." in page.text
    art = service.store.get_artefact(art_id)
    assert (art.title, art.status, art.height, art.dimension_unit) == ("Lamp", "looted", 12.5, "cm")
    assert [p.view for p in art.photos] == ["front", "front"]
    # Edit: every field of the form is the record's new state.
    token = csrf_of(client, f"/registry/{art_id}")
    form = {"csrf_token": token, "inventory_number": "GAZA-7", "title": "Oil lamp", "status": "recovered",
            "inscriptions": "ΚΑΛΗ"}
    assert client.post(f"/registry/{art_id}", data=form, follow_redirects=False).status_code == 303
    art = service.store.get_artefact(art_id)
    assert (art.title, art.status, art.inscriptions, art.height) == ("Oil lamp", "recovered", "ΚΑΛΗ", None)
    # Invalid input comes back on the form, nothing changed.
    bad = dict(form, height="-3")
    r = client.post(f"/registry/{art_id}", data=bad)
    assert r.status_code == 422 and "Height" in r.text
    assert client.post(f"/registry/{art_id}", data=dict(form, inventory_number="")).status_code == 422
    cleared = client.post(f"/registry/{art_id}", data={k: v for k, v in form.items() if k != "status"})
    assert cleared.status_code == 422 and "Status" in cleared.text and "inventory number" not in cleared.text
    # More photos, several at once.
    r = client.post(f"/registry/{art_id}/photos", data={"csrf_token": token, "view": "detail"},
                    files=[("image", ("c.jpg", jpeg_bytes(random_photo(42)), "image/jpeg")),
                           ("image", ("d.jpg", jpeg_bytes(random_photo(43)), "image/jpeg"))],
                    follow_redirects=False)
    assert r.status_code == 303
    assert len(service.store.get_artefact(art_id).photos) == 4
    # The registry list finds it by its filters; the changes are audited under the key's name.
    listing = client.get("/registry?q=oil&status=recovered").text
    assert "GAZA-7" in listing and "Photos: 4, indexed: 4" in listing
    assert "GAZA-7" not in client.get("/registry?status=stolen").text
    changes = [e for e in AuditLog(service.store.sessions).events() if e.artefact_id == art_id]
    assert changes and all(e.key_name == "registrar-key" for e in changes)


def test_an_edit_form_saved_unchanged_keeps_every_measurement_exactly(browser_as, service):
    import re

    art = service.register_artefact({"inventory_number": "R-1", "title": "Bowl", "height": 12.3456789,
                                     "diameter": 30.48, "weight": 1234567.0, "weight_unit": "g"}, [])
    client = browser_as("registrar")
    page = client.get(f"/registry/{art.id}").text
    form = {m[1]: m[2] for m in re.finditer(r'<input id="f-\w+" name="(\w+)"[^>]*value="([^"]*)"', page)}
    form.update({m[1]: m[2] for m in re.finditer(r'<textarea id="f-\w+" name="(\w+)"[^>]*>([^<]*)</textarea>', page)})
    form["status"] = re.search(r'<option value="(\w+)" selected', page)[1]
    assert (form["height"], form["diameter"], form["weight"]) == ("12.3456789", "30.48", "1234567")
    form.update(title="Bronze bowl", csrf_token=csrf_of(client, f"/registry/{art.id}"))
    assert client.post(f"/registry/{art.id}", data=form, follow_redirects=False).status_code == 303
    after = service.store.get_artefact(art.id)
    assert (after.title, after.height, after.diameter, after.weight) == ("Bronze bowl", 12.3456789, 30.48, 1234567.0)
    from app.web.i18n import Translator
    from app.web.record_form import record_rows

    rows = dict(record_rows(after, Translator("en")))
    assert rows["Weight"] == "1234567 g" and rows["Measurements"].startswith("Height 12.3456789 ×")


def test_registry_form_errors_are_in_the_pages_language(browser_as, service):
    service.register_artefact({"inventory_number": "TAKEN-1"}, [])
    client = browser_as("registrar")
    client.get("/search?lang=ar")  # the officer switched to Arabic
    token = csrf_of(client, "/registry/new")
    r = client.post("/registry/new", data={"csrf_token": token, "inventory_number": "N-1", "height": "-3",
                                           "date_reported": "2024-13-01", "weight": "heavy"})
    assert r.status_code == 422 and 'dir="rtl"' in r.text
    assert "الارتفاع: يجب أن يكون 0 أو أكثر" in r.text and "يجب أن يكون تاريخاً" in r.text
    assert "يجب أن يكون رقماً" in r.text and "Input should" not in r.text
    r = client.post("/registry/new", data={"csrf_token": token, "inventory_number": "TAKEN-1", "status": "missing"})
    assert r.status_code == 422 and "رقم الجرد هذا" in r.text and "Another artefact" not in r.text
    r = client.post("/registry/new", data={"csrf_token": token, "inventory_number": "N-2", "status": "missing",
                                           "view": "côté gauche"},
                    files=[("image", ("bad.jpg", b"not a photo", "image/jpeg"))])
    assert r.status_code == 422 and "bad.jpg: " in r.text and "The file is not" not in r.text
    assert 'value="N-2"' in r.text  # what the registrar typed is still on the form
    assert 'value="côté gauche"' in r.text
    assert "اخترها مرة أخرى" in r.text  # the browser emptied the file input: the registrar is told
    assert service.store.find_artefact("", "N-2") is None


def test_web_paths_answer_http_errors_with_translated_pages(browser_as):
    client = browser_as("registrar")
    for path, status in (("/nope?lang=ar", 404), ("/registry?page=abc&lang=ar", 422)):
        r = client.get(path)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), path
        assert 'dir="rtl"' in r.text and "not_found" not in r.text and "validation_error" not in r.text
    r = client.put("/search?lang=fr")
    assert r.status_code == 405 and "utilise pas ainsi" in r.text
    # The API keeps its JSON errors.
    r = client.get("/v1/nope")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"  # no key: refused before routing
    assert client.get("/openapi.json/nope").json()["error"]["code"] == "not_found"


def test_several_photos_at_once_fit_the_request_limit_and_one_too_many_gets_a_page(settings, encoder):
    from app.main import create_app
    from app.security.keys import KeyStore
    from app.service import MatchingService
    from tests.web.test_web import sign_in

    small = MatchingService(settings.model_copy(update={"max_upload_mb": 0.5, "max_request_mb": 2}),
                            encoder=encoder).start()
    key = KeyStore(small.store.sessions).create("registrar-key", "registrar").token
    import numpy as np
    from PIL import Image

    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (300, 420, 3), dtype=np.uint8))
             for i in range(4)]
    photos = [("image", (f"p{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(noise)]
    assert all(0.25e6 < len(p[1][1]) < 0.5 * 2**20 for p in photos)  # each under the photo limit, 4 over it
    with TestClient(create_app(service=small)) as client:
        sign_in(client, key)
        token = csrf_of(client, "/registry/new")
        r = client.post("/registry/new", data={"csrf_token": token, "inventory_number": "MANY-1", "status": "missing"},
                        files=photos, follow_redirects=False)
        assert r.status_code == 303, r.text
        assert len(small.store.find_artefact("", "MANY-1").photos) == 4
        r = client.post("/registry/new?lang=ar", data={"csrf_token": token, "inventory_number": "MANY-2"},
                        files=photos * 3)  # about 4 MB: over the request limit
        assert r.status_code == 413 and 'dir="rtl"' in r.text and "2 ميغابايت" in r.text
        # The API's upload of several photos has the same room.
        r = client.post(f"/v1/artefacts/{small.store.find_artefact('', 'MANY-1').id}/photos", files=photos[:1],
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201
    small.close()


def test_language_follows_switch_then_cookie_then_accept_language(app):
    with TestClient(app) as client:
        assert '<html lang="en" dir="ltr">' in client.get("/signin").text
        fr = client.get("/signin", headers={"Accept-Language": "de-DE, fr-CH;q=0.9, en;q=0.5"}).text
        assert '<html lang="fr" dir="ltr">' in fr and "Se connecter" in fr
        assert '<html lang="en"' in client.get("/signin", headers={"Accept-Language": "fr;q=0, en"}).text
        ar = client.get("/signin?lang=ar", headers={"Accept-Language": "fr"})
        assert '<html lang="ar" dir="rtl">' in ar.text and "تسجيل الدخول" in ar.text
        assert "hm_lang=ar" in ar.headers["set-cookie"]
        # The switch is remembered over the browser's preference.
        assert 'dir="rtl"' in client.get("/signin", headers={"Accept-Language": "fr"}).text
        assert 'dir="rtl"' in client.get("/signin?lang=xx").text  # an unknown language changes nothing
        assert '<html lang="fr"' in client.get("/signin?lang=fr").text


def test_accept_language_parsing():
    from app.web.i18n import parse_accept_language

    assert parse_accept_language("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5") == ["fr", "fr", "en", "*"]
    assert parse_accept_language("en;q=0.2, ar") == ["ar", "en"]
    assert parse_accept_language("ar;q=0, fr;q=bad") == []
    assert parse_accept_language(None) == []


def test_catalogues_translate_every_message():
    from app.web.catalogue_check import messages, missing
    from app.web.i18n import catalogue

    found = messages()
    assert len(found) > 100 and "Case report" in found and "Inventory number" in found
    for lang in ("ar", "fr"):
        assert not missing(lang), f"{lang} lacks {sorted(missing(lang))[:5]}"
    arabic = catalogue("ar")
    assert all(re.search(r"[\u0600-\u06FF]", arabic[m]) for m in found), "every Arabic string is in Arabic script"
    french = catalogue("fr")
    same = [m for m in found if french[m] == m]
    assert len(same) < 12, same  # a few words are the same in French (Description, Photos, Score...)
    # Placeholders survive translation.
    for lang in ("ar", "fr"):
        for m in found:
            assert sorted(re.findall(r"%\(\w+\)s", m)) == sorted(re.findall(r"%\(\w+\)s", catalogue(lang)[m])), m


def test_pages_load_nothing_from_elsewhere(demo, coins, browser_as):
    client = browser_as("admin")
    results = web_search(client, coin_query(coins[1].image, random.Random(2)))
    art_id = demo.store.find_artefact("heritage-match demo registry", coins[1].inventory_number).id
    pages = ["/search", results, results + "/report", "/registry", "/registry/new", f"/registry/{art_id}",
             results + "?lang=ar", results + "?lang=fr"]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == WEB_CSP
        assert "unsafe-inline" not in WEB_CSP and "script-src 'self';" in WEB_CSP
        assert r.headers["cache-control"] == "no-store"
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', r.text):
            assert url.startswith(("/", "?", "#")) and not url.startswith("//"), (path, url)
        assert "<script>" not in r.text and " style=" not in r.text  # the CSP would block them
        assert not re.search(r"\son[a-z]+=", r.text), (path, "inline event handler")
    photo = demo.store.get_artefact(art_id).photos[0].id
    for size in ("thumb", "large", "full"):  # registry photos, too, stay out of the browser's cache
        assert client.get(f"/photos/{photo}?size={size}").headers["cache-control"] == "no-store"
    for asset in ("/static/app.css", "/static/app.js"):
        body = client.get(asset).text
        assert "http://" not in body and "https://" not in body and "@import" not in body


def test_web_files_ship_in_the_package():
    """pyproject's package data covers every template, static file and catalogue."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    web = root / "app" / "web"
    files = [p.relative_to(root / "app").as_posix() for sub in ("templates", "static", "translations")
             for p in (web / sub).rglob("*") if p.is_file()]
    assert len(files) >= 10
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f"{f} is not in the wheel"


def test_a_lot_of_two_coins_frames_each_match_in_the_query_photo(demo, coins, browser_as):
    from app.jobs.listing_transforms import lot

    left, right = coins[4], coins[17]
    photo = lot([left.image.resize((300, 300)), right.image.resize((300, 300))], random.Random(3))
    client = browser_as("officer")
    page = client.get(web_search(client, jpeg_bytes(photo, quality=85))).text
    cards = {}
    for block in page.split('<li class="card result"')[1:]:
        inventory = re.search(r'data-inventory="([^"]+)"', block).group(1)
        cards[inventory] = block
    width = photo.width
    for coin, on_left in ((left, True), (right, False)):
        rect = re.search(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', cards[coin.inventory_number])
        assert rect, f"no frame drawn for {coin.inventory_number}"
        x, _, w, _ = map(int, rect.groups())
        assert (x + w / 2 < width / 2) == on_left


def test_ids_out_of_range_are_refused_not_crashes(browser_as):
    client = browser_as("admin")
    for path in ("/photos/99999999999999999999999", "/registry/0", "/registry/99999999999999999999999"):
        assert client.get(path).status_code == 422, path
    assert client.get("/registry/987654").status_code == 404


def test_web_searches_share_the_keys_rate_limit(settings, service, keys):
    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 2}),
                         service=service)
    photo = jpeg_bytes(random_photo(8))
    with TestClient(limited) as client:
        sign_in(client, keys["officer"])
        token = csrf_of(client)
        codes = [client.post("/search", data={"csrf_token": token}, files={"image": ("q.jpg", photo, "image/jpeg")},
                             follow_redirects=False).status_code for _ in range(3)]
        assert codes == [303, 303, 429]
        # The API's bucket for the same key is the same one.
        r = client.post("/v1/search", headers=bearer(keys["officer"]), files={"image": ("q.jpg", photo, "image/jpeg")})
        assert r.status_code == 429


def test_results_show_the_other_photos_of_a_matched_object(browser_as, service):
    from app.service import PhotoInput

    front, back = jpeg_bytes(random_photo(61)), jpeg_bytes(random_photo(62))
    art = service.register_artefact({"inventory_number": "TWO-SIDES", "title": "Plaque"},
                                    [PhotoInput(front, "front"), PhotoInput(back, "back")])
    client = browser_as("officer")
    page = client.get(web_search(client, front)).text
    first = page.split('<li class="card result"')[1]
    assert 'data-inventory="TWO-SIDES" data-verdict="match"' in first
    back_id = next(p.id for p in art.photos if p.view == "back")
    assert "Other photos of this object" in first and f'/photos/{back_id}?size=thumb' in first
    assert client.get(f"/photos/{back_id}?size=thumb").status_code == 200  # opened by the match


def test_refused_web_searches_are_audited_like_the_apis(tmp_path, settings, encoder):
    import hashlib

    from app.service import MatchingService

    small = MatchingService(settings.model_copy(update={"data_dir": tmp_path / "small", "max_upload_mb": 0.01}),
                            encoder=encoder).start()
    key = KeyStore(small.store.sessions).create("officer-key", "officer").token
    with TestClient(create_app(service=small)) as client:
        sign_in(client, key)
        token = csrf_of(client)
        big = b"\x89PNG" + b"0" * 20_000  # over the limit, under the request-size guard
        r = client.post("/search", data={"csrf_token": token}, files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413 and "too large" in r.text
        r = client.post("/search", data={"csrf_token": token}, files={"image": ("x.jpg", b"junk", "image/jpeg")})
        assert r.status_code == 422
    events = [e for e in AuditLog(small.store.sessions).events() if e.action == "search"]
    small.close()
    assert [(e.outcome, e.key_name) for e in events] == [("image_too_large", "officer-key"),
                                                          ("bad_image", "officer-key")]
    assert events[1].query_sha256 == hashlib.sha256(b"junk").hexdigest()


def test_sessions_survive_a_restart_and_the_secret_is_in_the_registry(settings, service, keys):
    from sqlalchemy.orm import Session

    from app.security.models import ServiceSecret
    from app.web.session import SECRET_NAME

    with TestClient(create_app(settings, service=service)) as first:
        sign_in(first, keys["officer"])
        cookie = first.cookies["hm_session"]
    with Session(service.store.engine) as s:
        stored = s.get(ServiceSecret, SECRET_NAME)
    assert stored is not None and len(stored.value) >= 48
    assert not (settings.data_dir / "web-secret").exists()  # nothing of it in the data directory
    with TestClient(create_app(settings, service=service), cookies={"hm_session": cookie}) as second:
        assert second.get("/search", follow_redirects=False).status_code == 200  # another worker, same secret
    other = settings.model_copy(update={"web_secret": "another secret"})
    with TestClient(create_app(other, service=service), cookies={"hm_session": cookie}) as third:
        assert third.get("/search", follow_redirects=False).status_code == 303


def test_cookie_is_secure_over_https(app, keys):
    with TestClient(app, base_url="https://testserver") as client:
        r = sign_in(client, keys["officer"])
        assert "secure" in r.headers["set-cookie"].lower()
    with TestClient(app) as client:
        assert "secure" not in sign_in(client, keys["officer"]).headers["set-cookie"].lower()


def test_without_auth_every_visitor_is_an_admin(settings, service):
    with TestClient(create_app(settings.model_copy(update={"auth": False}), service=service)) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/search"
        assert client.get("/registry").status_code == 200


def test_kept_searches_are_shared_by_server_processes_bounded_and_private(tmp_path, demo, coins):
    """Two keepers on one registry database stand for two server processes: a results link made by one
    opens on the other; only the last ``capacity`` searches stay; another session sees nothing."""
    from app.registry.store import RegistryStore
    from app.web.searches import SearchKeeper
    from tests.conftest import jpeg_bytes

    response = demo.search(jpeg_bytes(coins[0].image))
    other_process = RegistryStore(demo.settings.db_url, tmp_path / "photos")
    one, two = SearchKeeper(demo.store.engine, capacity=3), SearchKeeper(lambda: other_process.engine, capacity=3)
    kept = [one.keep(sid="s1", key_id=7, key_name="desk", role="officer", response=response,
                     display_jpeg=b"\xff\xd8jpeg", filename=f"q{n}.jpg") for n in range(4)]
    again = two.get(kept[-1].id, "s1", 7)
    assert again is not None and again.response == response and again.display_jpeg == b"\xff\xd8jpeg"
    assert again.filename == "q3.jpg" and again.at == kept[-1].at
    assert two.get(kept[0].id, "s1", 7) is None  # the oldest went first
    assert two.get(kept[-1].id, "other-session", 7) is None and two.get(kept[-1].id, "s1", 8) is None
    other_process.close()


@pytest.fixture
def registry_calibration(settings, encoder):
    """A calibration fitted on the test registry (as `heritage-match calibrate` stores it), in place before
    the service starts."""
    from app.pipeline.calibrate import calibration_path, data_calibration_path

    data = json.loads(calibration_path(encoder.fingerprint.name).read_text())
    data["source"] = {**data["source"], "fitted": "2026-12-07T12:00:00Z", "figures_held_out": {
        "registry-listing": {"recall@1": 0.97, "match_recall": 0.93, "false_match_rate": 0.0,
                             "false_match_rate_upper95": 0.0445},
        "all": {"recall@1": 0.97, "match_recall": 0.93, "false_match_rate": 0.0, "false_match_rate_upper95": 0.0445}}}
    path = data_calibration_path(settings.data_dir, encoder.fingerprint.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_case_report_says_which_calibration_scored_the_search(registry_calibration, demo, coins, browser_as):
    client = browser_as("officer")
    results = web_search(client, coin_query(coins[5].image, random.Random(4)))
    text = client.get(results + "/report").text
    assert 'data-origin="data-dir"' in text and "fitted on this registry" in text
    assert "2026-12-07T12:00:00Z" in text
    held_out = re.search(r'id="report-held-out">(.*?)</td>', text, re.S).group(1)
    assert "registry-listing" in held_out and "0.0%, at most 4.5% at 95% confidence" in held_out
    assert "all packs" not in held_out  # one pack: the same figures twice say nothing more
    french = client.get(results + "/report?lang=fr").text
    assert "ajusté sur ce registre" in french and "au plus 4.5%" in french
