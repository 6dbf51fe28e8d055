"""The alerts pages: registrars and admins only, listing text shown as text, confirm and dismiss audited."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.registry.alerts import AlertDraft, AlertStore
from app.security.audit import AuditLog, event_dict
from app.service import PhotoInput
from app.web.pages import WEB_CSP
from tests.conftest import ROLES, jpeg_bytes, random_photo
from tests.web.test_web import browser_as, csrf_of  # noqa: F401  (browser_as is a fixture)

HOSTILE_TITLE = 'Coin \u202egnp.exe <script>alert(1)</script> "quoted"'


@pytest.fixture
def alert(service):
    art = service.register_artefact({"inventory_number": "WEB-1", "title": "Silver coin"},
                                    [PhotoInput(jpeg_bytes(random_photo(41)))])
    created, _ = AlertStore(service.store.sessions).raise_alert(AlertDraft(
        artefact_id=art.id, registry_photo_id=art.photos[0].id, score=0.88, verdict="match", source="retrohunt",
        evidence={"inliers": 45, "coverage": 0.75, "surface": 0.9, "summary": "45 keypoints agree"},
        archive_photo_id=8, platform="souk", listing_id="S-77", listing_url="https://souk.example/item/77?a=1&b=2",
        listing_title=HOSTILE_TITLE, listing_seller="\u202bseller\u202c", listing_price="1 200 MAD",
        listing_thumbnail=jpeg_bytes(random_photo(42, size=(64, 64)))))
    return created


@pytest.mark.parametrize("role", ROLES)
def test_alert_pages_are_for_registrars_and_admins(role, app, alert, browser_as):  # noqa: F811
    client = browser_as(role)
    allowed = role in {"admin", "registrar"}
    for path in ("/alerts", f"/alerts/{alert.id}", f"/alerts/{alert.id}/listing.jpg"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == (200 if allowed else 403), (role, path, r.status_code)
    assert ('href="/alerts"' in client.get("/search").text) == allowed  # the nav links to them
    r = client.post(f"/alerts/{alert.id}", data={"csrf_token": csrf_of(client), "status": "dismissed"},
                    follow_redirects=False)
    assert r.status_code == (303 if allowed else 403)
    with TestClient(app) as anonymous:
        r = anonymous.get("/alerts", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=")


def test_the_list_shows_new_alerts_and_filters_by_status(alert, browser_as, service):  # noqa: F811
    client = browser_as("registrar")
    page = client.get("/alerts")
    assert page.status_code == 200 and f'href="/alerts/{alert.id}"' in page.text
    assert "WEB-1" in page.text and f'src="/alerts/{alert.id}/listing.jpg"' in page.text
    AlertStore(service.store.sessions).set_status(alert.id, "dismissed")
    assert f'href="/alerts/{alert.id}"' not in client.get("/alerts").text  # new ones by default
    assert f'href="/alerts/{alert.id}"' in client.get("/alerts?status=dismissed").text
    assert f'href="/alerts/{alert.id}"' in client.get("/alerts?status=all").text


def test_an_alert_shows_both_photos_and_hostile_listing_text_as_text(alert, browser_as):  # noqa: F811
    client = browser_as("registrar")
    r = client.get(f"/alerts/{alert.id}")
    html = r.text
    assert r.headers["content-security-policy"] == WEB_CSP and r.headers["cache-control"] == "no-store"
    assert f'src="/alerts/{alert.id}/listing.jpg"' in html
    assert f'src="/photos/{alert.registry_photo_id}?size=large"' in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "\u202e" not in html and "\u202b" not in html and "\u2039U+202E\u203a" in html  # controls made visible
    assert "45 keypoints agree over 75% of the object" in html  # the evidence line
    link = re.search(r'<a href="([^"]+)" rel="([^"]+)" id="listing-link">', html)
    assert link and link.group(1) == "https://souk.example/item/77?a=1&amp;b=2"
    assert set(link.group(2).split()) == {"noopener", "noreferrer", "nofollow"}
    assert 'dir="auto"' in html and "<bdi>" in html
    assert client.get(f"/alerts/{alert.id}/listing.jpg").content.startswith(b"\xff\xd8\xff")
    assert client.get("/alerts/987654").status_code == 404


def test_only_http_urls_become_links(service, browser_as):  # noqa: F811
    art = service.register_artefact({"inventory_number": "WEB-2"}, [])
    store = AlertStore(service.store.sessions)
    ids = [store.raise_alert(AlertDraft(artefact_id=art.id, score=0.6, verdict="possible", source="scan",
                                        archive_photo_id=n, listing_url=url))[0].id
           for n, url in enumerate(["javascript:alert(document.cookie)", "data:text/html,<b>x</b>",
                                    "https://ok.example/\u202emoc.elgoog"])]
    client = browser_as("admin")
    for alert_id in ids:
        html = client.get(f"/alerts/{alert_id}").text
        assert 'id="listing-link"' not in html and 'href="javascript' not in html and 'href="data' not in html


def test_confirming_in_the_page_is_audited_as_the_signed_in_key(alert, browser_as, service):  # noqa: F811
    client = browser_as("registrar")
    for token in ("", "forged"):  # no CSRF token, no change
        r = client.post(f"/alerts/{alert.id}", data={"csrf_token": token, "status": "confirmed"},
                        follow_redirects=False)
        assert r.status_code == 403
    page = client.get(f"/alerts/{alert.id}").text
    assert 'id="confirm-alert"' in page and 'id="dismiss-alert"' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/alerts/{alert.id}", data={"csrf_token": token, "status": "confirmed", "note": "Same scratch"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/alerts/{alert.id}?saved=1"
    after = AlertStore(service.store.sessions).get(alert.id)
    assert after.status == "confirmed" and after.status_changed_by == "registrar-key" and after.note == "Same scratch"
    shown = client.get(f"/alerts/{alert.id}?saved=1").text
    assert 'data-status="confirmed"' in shown and 'id="reopen-alert"' in shown
    bad = client.post(f"/alerts/{alert.id}", data={"csrf_token": token, "status": "deleted"}, follow_redirects=False)
    assert bad.status_code == 422
    [event] = [event_dict(e) for e in AuditLog(service.store.sessions).events() if e.action == "alert.status"]
    assert event["key_name"] == "registrar-key" and event["role"] == "registrar"
    assert event["details"]["changes"]["status"] == {"from": "new", "to": "confirmed"}
    assert event["details"]["alert_id"] == alert.id


def test_alert_pages_speak_arabic_and_french(alert, browser_as):  # noqa: F811
    client = browser_as("registrar")
    arabic = client.get(f"/alerts/{alert.id}?lang=ar").text
    assert 'dir="rtl"' in arabic and "صورة الإعلان" in arabic and "تأكيد: إنها هذه القطعة" in arabic
    french = client.get("/alerts?lang=fr").text
    assert "Alertes" in french and "Nouvelle" in french
