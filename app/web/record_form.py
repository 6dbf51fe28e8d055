"""The Object ID record on web pages: field labels, the record as rows, the form read back into fields."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from app.registry.models import Artefact, ArtefactStatus
from app.schemas import RECORD_FIELDS
from app.web.i18n import N_


@dataclass(frozen=True)
class Field:
    name: str
    label: str  # msgid
    kind: str = "text"  # text, textarea, number, date, status
    required: bool = False


# In Object ID's order: identification, description, physical, then the case.
FIELDS = (
    Field("inventory_number", N_("Inventory number"), required=True),
    Field("institution", N_("Institution")),
    Field("status", N_("Status"), "status", required=True),
    Field("title", N_("Title")),
    Field("category", N_("Category")),
    Field("object_type", N_("Type of object")),
    Field("materials", N_("Materials"), "textarea"),
    Field("techniques", N_("Techniques"), "textarea"),
    Field("height", N_("Height"), "number"),
    Field("width", N_("Width"), "number"),
    Field("depth", N_("Depth"), "number"),
    Field("diameter", N_("Diameter"), "number"),
    Field("dimension_unit", N_("Unit of measurement")),
    Field("weight", N_("Weight"), "number"),
    Field("weight_unit", N_("Unit of weight")),
    Field("inscriptions", N_("Inscriptions and markings"), "textarea"),
    Field("distinguishing_features", N_("Distinguishing features"), "textarea"),
    Field("date_period", N_("Date or period")),
    Field("maker", N_("Maker")),
    Field("subject", N_("Subject"), "textarea"),
    Field("description", N_("Description"), "textarea"),
    Field("find_site", N_("Find site")),
    Field("provenance", N_("Provenance"), "textarea"),
    Field("date_reported", N_("Date reported"), "date"),
    Field("source_reference", N_("Source reference")),
)
assert {f.name for f in FIELDS} == set(RECORD_FIELDS), "every record field has a place on the form"

STATUS_LABELS = {
    ArtefactStatus.missing.value: N_("Missing"),
    ArtefactStatus.stolen.value: N_("Stolen"),
    ArtefactStatus.looted.value: N_("Looted"),
    ArtefactStatus.destroyed.value: N_("Destroyed"),
    ArtefactStatus.at_risk.value: N_("At risk"),
    ArtefactStatus.in_custody.value: N_("In custody"),
    ArtefactStatus.recovered.value: N_("Recovered"),
}
MEASUREMENTS = ("height", "width", "depth", "diameter")


def _number(value: float) -> str:
    """The shortest text that reads back as the same number: a form saved unchanged must not round a
    measurement (``:g`` kept 6 digits: 1234567 g became 1.23457e+06)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def record_rows(artefact: Artefact, t) -> list[tuple[str, str]]:
    """(label, value) of the filled fields, measurements on one row as an officer reads them."""
    rows = []
    sizes = [f"{t.gettext(f.label)} {_number(getattr(artefact, f.name))}" for f in FIELDS
             if f.name in MEASUREMENTS and getattr(artefact, f.name) is not None]
    for f in FIELDS:
        value = getattr(artefact, f.name)
        if f.name in MEASUREMENTS or f.name in ("dimension_unit", "weight_unit", "weight"):
            if f.name == "height" and sizes:
                unit = artefact.dimension_unit or ""
                rows.append((t.gettext("Measurements"), " × ".join(sizes) + (f" {unit}" if unit else "")))
            if f.name == "weight" and value is not None:
                rows.append((t.gettext(f.label), f"{_number(value)} {artefact.weight_unit or ''}".strip()))
            continue
        if value in (None, ""):
            continue
        if f.name == "status":
            value = t.gettext(STATUS_LABELS.get(value, value))
        elif isinstance(value, dt.date):
            value = value.isoformat()
        rows.append((t.gettext(f.label), str(value)))
    return rows


def form_values(artefact: Artefact | None) -> dict[str, str]:
    """What the form's inputs show for a record (empty for a new one)."""
    if artefact is None:
        return {"status": ArtefactStatus.missing.value}
    values = {}
    for f in FIELDS:
        value = getattr(artefact, f.name)
        if value is None:
            values[f.name] = ""
        elif isinstance(value, float):
            values[f.name] = _number(value)
        elif isinstance(value, dt.date):
            values[f.name] = value.isoformat()
        else:
            values[f.name] = str(value)
    return values


def fields_from_form(form) -> tuple[dict, dict[str, str]]:
    """The record fields of a submitted form (empty inputs are None), and the raw values to show again."""
    raw = {f.name: str(form.get(f.name, "") or "").strip() for f in FIELDS}
    fields = {name: (value if value != "" else None) for name, value in raw.items()}
    if fields["institution"] is None:
        fields["institution"] = ""
    return fields, raw
