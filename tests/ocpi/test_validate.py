"""relay.ocpi.validate against the OCPI examples in tests/fixtures/ocpi and the receiver brief's policies."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from relay.errors import INVALID_PARAMS, OcpiError
from relay.ocpi.paths import MODULES
from relay.ocpi.times import format_datetime
from relay.ocpi.validate import check_path_ids, parse_datetime, validate_object

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "ocpi"

LOC_ID = "3f9c1e72-8a4d-4b6e-9d21-5c7a0e4b18f6"
SESSION_ID = "NLGFX638452100421337012-4c1e9"

# How each example is pushed (README table): file prefix -> (module, level, method, ids).
LOCATION_PUT = ("locations", "location", "PUT", {"id": LOC_ID})
EVSE_PATCH = ("locations", "evse", "PATCH", {"uid": "NL-GFX-E0873422-1"})
EVSE_PUT = ("locations", "evse", "PUT", {"uid": "NL-GFX-E0873422-1"})
CONNECTOR_PUT = ("locations", "connector", "PUT", {"id": "2"})
SESSION_PUT = ("sessions", "session", "PUT", {"id": SESSION_ID})
SESSION_PATCH = ("sessions", "session", "PATCH", {"id": SESSION_ID})
CDR_POST: tuple[str, str, str, dict[str, str]] = ("cdrs", "cdr", "POST", {})

VALID = {
    "location_full.json": LOCATION_PUT,
    "location_patch_evse_status.json": EVSE_PATCH,
    "location_patch_evse_status_gfx_minimal.json": EVSE_PATCH,
    "location_put_gfx_quirks.json": LOCATION_PUT,
    "connector_put.json": CONNECTOR_PUT,
    "session_active.json": SESSION_PUT,
    "session_patch_kwh.json": SESSION_PATCH,
    "session_patch_full_15min.json": SESSION_PATCH,
    "session_completed.json": SESSION_PUT,
    "cdr_full.json": CDR_POST,
}

INVALID = {
    "invalid_location_missing_address.json": (LOCATION_PUT, "address"),
    "invalid_location_id_mismatch.json": (LOCATION_PUT, "id"),
    "invalid_location_latitude_out_of_range.json": (LOCATION_PUT, "coordinates.latitude"),
    "invalid_evse_patch_status_enum.json": (EVSE_PATCH, "status"),
    "invalid_evse_put_connectors_not_list.json": (EVSE_PUT, "connectors"),
    "invalid_connector_put_unknown_standard.json": (CONNECTOR_PUT, "standard"),
    "invalid_session_id_too_long.json": (
        ("sessions", "session", "PUT", {"id": SESSION_ID + "-retry02"}),
        "id",
    ),
    "invalid_session_bad_datetime.json": (SESSION_PUT, "start_datetime"),
    "invalid_session_negative_kwh.json": (SESSION_PUT, "kwh"),
    "invalid_session_kwh_wrong_type.json": (SESSION_PUT, "kwh"),
    "invalid_session_null_required_currency.json": (SESSION_PUT, "currency"),
    "invalid_cdr_empty_charging_periods.json": (CDR_POST, "charging_periods"),
}

# file -> (push, field strict mode names, or None when strict accepts it too)
POLICY = {
    "policy_session_nonutc_offset.json": (SESSION_PUT, "start_datetime"),
    "policy_location_numeric_coordinates.json": (LOCATION_PUT, "coordinates.latitude"),
    "policy_session_fractional_seconds.json": (SESSION_PUT, None),
}


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return body


def run(push: tuple[str, str, str, dict[str, str]], body: object, *, strict: bool = False) -> dict[str, Any]:
    module, level, method, ids = push
    return validate_object(module, level, method, body, ids, strict=strict)


def refused(push: tuple[str, str, str, dict[str, str]], body: object, *, strict: bool = False) -> OcpiError:
    with pytest.raises(OcpiError) as info:
        run(push, body, strict=strict)
    err = info.value
    assert (err.http_status, err.status_code) == (400, INVALID_PARAMS)
    return err


def field_of(err: OcpiError) -> str:
    return err.message.split(": ", 1)[0]


def test_examples_folder_holds_every_file_the_tables_name() -> None:
    on_disk = {p.name for p in EXAMPLES.glob("*.json") if not p.name.startswith("chargestationnotification")}
    assert on_disk == set(VALID) | set(INVALID) | set(POLICY)


# ---------------------------------------------------------------------------------------------
# The shared examples


@pytest.mark.parametrize("strict", [False, True], ids=["liberal", "strict"])
@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_example_is_accepted(name: str, strict: bool) -> None:
    body = load(name)
    out = run(VALID[name], body, strict=strict)
    assert out == body  # already canonical: nothing to normalise


@pytest.mark.parametrize("strict", [False, True], ids=["liberal", "strict"])
@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_example_is_refused_naming_the_field(name: str, strict: bool) -> None:
    push, field = INVALID[name]
    err = refused(push, load(name), strict=strict)
    assert field_of(err) == field, err.message


@pytest.mark.parametrize("name", sorted(POLICY))
def test_policy_example_is_accepted_in_liberal_mode(name: str) -> None:
    push, _ = POLICY[name]
    run(push, load(name))


@pytest.mark.parametrize("name", sorted(POLICY))
def test_policy_example_in_strict_mode_follows_the_strict_column(name: str) -> None:
    push, field = POLICY[name]
    if field is None:
        run(push, load(name), strict=True)
    else:
        assert field_of(refused(push, load(name), strict=True)) == field


def test_session_id_too_long_is_also_refused_as_path_segment() -> None:
    with pytest.raises(OcpiError) as info:
        check_path_ids("sessions", "NL", "GFX", [SESSION_ID + "-retry02"])
    assert field_of(info.value) == "session_id"


# ---------------------------------------------------------------------------------------------
# Normalisation and what is kept


def test_non_utc_offset_is_converted_to_utc_in_liberal_mode() -> None:
    out = run(SESSION_PUT, load("policy_session_nonutc_offset.json"))
    assert out["start_datetime"] == "2024-03-05T08:14:02Z"


def test_fractional_seconds_are_kept_without_trailing_zeros() -> None:
    out = run(SESSION_PUT, load("policy_session_fractional_seconds.json"))
    assert out["start_datetime"] == "2024-03-05T08:14:02.4817Z"
    assert out["last_updated"] == "2024-03-05T08:14:06.12Z"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("2024-03-05T08:14:02", "2024-03-05T08:14:02Z"),
        ("2024-03-05T08:14:02+00:00", "2024-03-05T08:14:02Z"),
        ("2024-03-05T08:14:02.000Z", "2024-03-05T08:14:02Z"),
        ("2024-03-05T08:14:02.1234567Z", "2024-03-05T08:14:02.123456Z"),
        ("2024-03-05T00:14:02-05:30", "2024-03-05T05:44:02Z"),
        ("2024-03-05T08:14:02z", "2024-03-05T08:14:02Z"),
    ],
)
def test_liberal_datetime_forms_are_stored_as_canonical_utc(raw: str, stored: str) -> None:
    out = run(EVSE_PATCH, {"last_updated": raw})
    assert out["last_updated"] == stored


def test_numeric_coordinates_are_rendered_as_six_decimal_strings() -> None:
    out = run(LOCATION_PUT, load("policy_location_numeric_coordinates.json"))
    assert out["coordinates"] == {"latitude": "52.160418", "longitude": "5.381967"}


def test_coordinate_strings_with_other_precision_are_rendered_with_six_decimals() -> None:
    body = load("location_full.json")
    body["coordinates"] = {"latitude": "52.16042", "longitude": "5.3819671"}
    out = run(LOCATION_PUT, body)
    assert out["coordinates"] == {"latitude": "52.160420", "longitude": "5.381967"}


def test_coordinate_strings_without_six_decimals_are_refused_in_strict_mode() -> None:
    body = load("location_full.json")
    body["coordinates"]["longitude"] = "5.38197"
    assert field_of(refused(LOCATION_PUT, body, strict=True)) == "coordinates.longitude"


def test_unknown_fields_are_kept_verbatim_at_every_level() -> None:
    body = load("location_put_gfx_quirks.json")
    body["evses"][0]["connectors"][0]["vendor"] = {"x": [1, {"y": None}]}
    body["parking_type"] = "ON_DRIVEWAY"
    out = run(LOCATION_PUT, body)
    assert out["publish"] == "true"
    assert out["parking_type"] == "ON_DRIVEWAY"
    assert out["evses"][0]["connectors"][0]["vendor"] == {"x": [1, {"y": None}]}
    assert out["evses"][0]["connectors"][0]["vendor"] is not body["evses"][0]["connectors"][0]["vendor"]


def test_nulls_for_optional_fields_are_kept_as_null() -> None:
    out = run(LOCATION_PUT, load("location_put_gfx_quirks.json"))
    assert out["directions"] is None
    assert out["facilities"] is None
    assert out["operator"]["logo"] is None
    assert out["evses"][0]["images"] is None


@pytest.mark.parametrize("name", sorted(POLICY) + ["location_put_gfx_quirks.json", "cdr_full.json"])
def test_input_body_is_not_mutated_and_result_is_a_new_object(name: str) -> None:
    push = POLICY[name][0] if name in POLICY else VALID[name]
    body = load(name)
    before = copy.deepcopy(body)
    out = run(push, body)
    assert body == before
    assert out is not body
    out["id"] = "changed"
    if "location" in out:
        out["location"]["evses"].clear()
    assert body == before


def test_integral_float_for_int_field_is_accepted_as_int() -> None:
    body = load("connector_put.json")
    body["voltage"] = 500.0
    out = run(CONNECTOR_PUT, body)
    assert out["voltage"] == 500
    assert type(out["voltage"]) is int


def test_floor_level_as_number_is_kept_as_string_in_liberal_mode_only() -> None:
    body = load("location_full.json")
    body["evses"][0]["floor_level"] = -1
    assert run(LOCATION_PUT, body)["evses"][0]["floor_level"] == "-1"
    assert field_of(refused(LOCATION_PUT, body, strict=True)) == "evses[0].floor_level"


def test_boolean_as_string_is_accepted_in_liberal_mode_only() -> None:
    body = load("location_full.json")
    body["charging_when_closed"] = "true"
    assert run(LOCATION_PUT, body)["charging_when_closed"] == "true"
    assert field_of(refused(LOCATION_PUT, body, strict=True)) == "charging_when_closed"


def test_utf8_free_text_is_accepted() -> None:
    body = load("location_full.json")
    body["name"] = "Café Eemplein – laadplein"
    assert run(LOCATION_PUT, body)["name"] == "Café Eemplein – laadplein"


def test_alpha2_country_is_accepted_in_liberal_mode_only() -> None:
    body = load("location_full.json")
    body["country"] = "NL"
    run(LOCATION_PUT, body)
    assert field_of(refused(LOCATION_PUT, body, strict=True)) == "country"


# ---------------------------------------------------------------------------------------------
# GreenFlux and PATCH


def test_greenflux_minimal_evse_patch_without_last_updated_is_accepted() -> None:
    assert run(EVSE_PATCH, {"status": "AVAILABLE"}) == {"status": "AVAILABLE"}


def test_patch_without_id_is_accepted() -> None:
    out = run(SESSION_PATCH, load("session_patch_kwh.json"))
    assert "id" not in out


def test_put_without_id_is_refused() -> None:
    body = load("connector_put.json")
    del body["id"]
    assert refused(CONNECTOR_PUT, body).message == "id: is required"


def test_patch_with_null_required_field_is_refused() -> None:
    assert refused(SESSION_PATCH, {"kwh": None}).message == "kwh: must not be null"


def test_patch_with_null_optional_field_is_kept_as_null() -> None:
    assert run(SESSION_PATCH, {"end_datetime": None, "kwh": 3.5}) == {"end_datetime": None, "kwh": 3.5}


def test_patch_validates_a_nested_list_in_full() -> None:
    body = {"charging_periods": [{"start_date_time": "2024-03-05T08:14:02Z"}]}
    assert refused(SESSION_PATCH, body).message == "charging_periods[0].dimensions: is required"


def test_evse_uid_in_body_must_equal_the_path() -> None:
    body = {"uid": "NL-GFX-E0873422-2", "status": "AVAILABLE"}
    assert field_of(refused(EVSE_PATCH, body)) == "uid"


def test_connector_id_in_body_must_equal_the_path() -> None:
    body = load("connector_put.json")
    body["id"] = "3"
    assert field_of(refused(CONNECTOR_PUT, body)) == "id"


def test_cdr_id_matches_the_path_case_insensitively_and_keeps_its_case() -> None:
    body = load("cdr_full.json")
    out = validate_object("cdrs", "cdr", "POST", body, {"id": body["id"].lower()})
    assert out["id"] == body["id"]


def test_session_id_matches_the_path_case_sensitively() -> None:
    assert field_of(refused(SESSION_PUT, {**load("session_active.json"), "id": SESSION_ID.upper()})) == "id"


def test_embedded_location_id_is_not_matched_against_the_path() -> None:
    body = load("session_active.json")
    body["location"]["id"] = "another-location"
    run(SESSION_PUT, body)


# ---------------------------------------------------------------------------------------------
# Refusals, with the field path they name


def _location_with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    body = load("location_full.json")
    target: Any = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("evses", 1, "connectors", 0, "standard"), "TYPE2", "evses[1].connectors[0].standard"),
        (("evses", 1, "connectors", 0, "voltage"), 16.5, "evses[1].connectors[0].voltage"),
        (("evses", 1, "connectors", 0, "voltage"), True, "evses[1].connectors[0].voltage"),
        (("evses", 1, "connectors", 0, "voltage"), "230", "evses[1].connectors[0].voltage"),
        (("evses", 1, "connectors", 0, "amperage"), -32, "evses[1].connectors[0].amperage"),
        (("evses", 1, "connectors"), [], "evses[1].connectors"),
        (("evses", 0, "connectors"), {"id": "1"}, "evses[0].connectors"),
        (("evses", 0), "NL-GFX-E0873421-1", "evses[0]"),
        (("evses",), {"uid": "x"}, "evses"),
        (("evses", 0, "capabilities"), "RFID_READER", "evses[0].capabilities"),
        (("evses", 0, "capabilities", 0), 7, "evses[0].capabilities[0]"),
        (
            ("evses", 0, "status_schedule"),
            [{"period_begin": "2024-03-06T00:00:00Z"}],
            "evses[0].status_schedule[0].status",
        ),
        (("evses", 0, "uid"), "NL GFX 1", "evses[0].uid"),
        (("evses", 0, "uid"), "", "evses[0].uid"),
        (("evses", 0, "evse_id"), "N" * 49, "evses[0].evse_id"),
        (("coordinates", "latitude"), "91.000000", "coordinates.latitude"),
        (("coordinates", "latitude"), "52,160418", "coordinates.latitude"),
        (("coordinates", "latitude"), "nan", "coordinates.latitude"),
        (("coordinates", "longitude"), "181.000000", "coordinates.longitude"),
        (("coordinates", "longitude"), 181.5, "coordinates.longitude"),
        (("coordinates",), None, "coordinates"),
        (("related_locations", 0, "name", "language"), "dutch", "related_locations[0].name.language"),
        (("directions", 0, "text"), "x" * 513, "directions[0].text"),
        (("name",), "x" * 256, "name"),
        (("address",), 74, "address"),
        (("type",), "GARAGE", "type"),
        (("country",), "N1L", "country"),
        (("operator", "name"), None, "operator.name"),
        (("operator", "logo", "category"), "LOGO", "operator.logo.category"),
        (("operator", "logo", "width"), 100000, "operator.logo.width"),
        (("opening_times", "regular_hours", 0, "weekday"), 8, "opening_times.regular_hours[0].weekday"),
        (("opening_times", "regular_hours", 0, "weekday"), 0, "opening_times.regular_hours[0].weekday"),
        (
            ("opening_times", "regular_hours", 2, "period_end"),
            "24:00",
            "opening_times.regular_hours[2].period_end",
        ),
        (
            ("opening_times", "regular_hours", 2, "period_begin"),
            "6:00",
            "opening_times.regular_hours[2].period_begin",
        ),
        (
            ("opening_times", "exceptional_closings", 0, "period_end"),
            "2024-12-24T22:00:00Z",
            "opening_times.exceptional_closings[0].period_end",
        ),
        (("energy_mix", "energy_sources", 0, "percentage"), 100.5, "energy_mix.energy_sources[0].percentage"),
        (("energy_mix", "energy_sources", 0, "percentage"), -1, "energy_mix.energy_sources[0].percentage"),
        (("energy_mix", "environ_impact", 0, "amount"), -0.1, "energy_mix.environ_impact[0].amount"),
        (("energy_mix", "is_green_energy"), "yes", "energy_mix.is_green_energy"),
        (("last_updated",), "2024-03-05T08:14", "last_updated"),
    ],
)
def test_location_refusal_names_the_nested_field(
    path: tuple[str | int, ...], value: object, field: str
) -> None:
    err = refused(LOCATION_PUT, _location_with(path, value))
    assert field_of(err) == field, err.message


def test_latitude_out_of_range_message_names_field_then_problem() -> None:
    err = refused(LOCATION_PUT, load("invalid_location_latitude_out_of_range.json"))
    assert err.message == "coordinates.latitude: 152.160418 is out of range (-90..90)"


def test_missing_connectors_on_evse_put_is_refused() -> None:
    body = load("invalid_evse_put_connectors_not_list.json")
    del body["connectors"]
    assert refused(EVSE_PUT, body).message == "connectors: is required"


def test_wrong_type_message_says_what_was_sent() -> None:
    assert refused(SESSION_PUT, load("invalid_session_kwh_wrong_type.json")).message == (
        "kwh: must be a number, not a string"
    )


@pytest.mark.parametrize("value", [True, False, "0", None, [1], {"kwh": 1}, float("nan"), float("inf")])
def test_kwh_must_be_a_finite_json_number(value: object) -> None:
    body = load("session_active.json")
    body["kwh"] = value
    assert field_of(refused(SESSION_PUT, body)) == "kwh"


@pytest.mark.parametrize(
    "value",
    [
        "2024-03-05 08:14",
        "2024-03-05T08:14",
        "2024-13-05T08:14:02Z",
        "2024-02-30T08:14:02Z",
        "2024-03-05T24:00:00Z",
        "05-03-2024T08:14:02Z",
        "2024-03-05T08:14:02.Z",
        "2024-03-05T08:14:02+25:00",
        "2024-03-05T08:14:02 Z",
        "2024-03-05",
        "",
        1709626442,
        True,
    ],
)
def test_uninterpretable_datetime_is_refused(value: object) -> None:
    body = load("session_active.json")
    body["start_datetime"] = value
    assert field_of(refused(SESSION_PUT, body)) == "start_datetime"


def test_session_ending_before_it_starts_is_refused_naming_the_end() -> None:
    body = load("session_completed.json")
    body["end_datetime"] = "2024-03-05T08:14:01Z"
    assert field_of(refused(SESSION_PUT, body)) == "end_datetime"


def test_end_equal_to_start_after_offset_conversion_is_accepted() -> None:
    body = load("session_completed.json")
    body["end_datetime"] = "2024-03-05T09:14:02+01:00"
    assert run(SESSION_PUT, body)["end_datetime"] == "2024-03-05T08:14:02Z"


def test_cdr_stopping_before_it_starts_is_refused_naming_the_stop() -> None:
    body = load("cdr_full.json")
    body["stop_date_time"] = "2024-03-05T08:00:00Z"
    assert field_of(refused(CDR_POST, body)) == "stop_date_time"


def test_empty_dimensions_are_refused() -> None:
    body = load("cdr_full.json")
    body["charging_periods"][1]["dimensions"] = []
    assert field_of(refused(CDR_POST, body)) == "charging_periods[1].dimensions"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_cost", -0.01),
        ("total_energy", -1),
        ("total_time", -0.5),
        ("total_parking_time", -0.5),
        ("total_cost", "10.67"),
        ("currency", "EURO"),
        ("currency", "E1R"),
        ("auth_method", "RFID"),
        ("auth_id", "x" * 37),
        ("remark", "x" * 256),
        ("tariffs", {"id": "GFX-AC-0.45"}),
        ("charging_periods", None),
    ],
)
def test_cdr_field_refusals(field: str, value: object) -> None:
    body = load("cdr_full.json")
    body[field] = value
    assert field_of(refused(CDR_POST, body)) == field


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (
            ("charging_periods", 0, "dimensions", 2, "volume"),
            -21.384,
            "charging_periods[0].dimensions[2].volume",
        ),
        (("charging_periods", 0, "dimensions", 2, "type"), "KWH", "charging_periods[0].dimensions[2].type"),
        (("tariffs", 0, "elements"), [], "tariffs[0].elements"),
        (("tariffs", 0, "elements", 0, "price_components"), [], "tariffs[0].elements[0].price_components"),
        (
            ("tariffs", 0, "elements", 0, "price_components", 1, "price"),
            "0.45",
            "tariffs[0].elements[0].price_components[1].price",
        ),
        (
            ("tariffs", 0, "elements", 0, "price_components", 1, "price"),
            -0.45,
            "tariffs[0].elements[0].price_components[1].price",
        ),
        (
            ("tariffs", 0, "elements", 0, "price_components", 2, "step_size"),
            300.5,
            "tariffs[0].elements[0].price_components[2].step_size",
        ),
        (
            ("location", "evses", 0, "connectors", 0, "format"),
            "PLUG",
            "location.evses[0].connectors[0].format",
        ),
        (("location", "postal_code"), "3812 EA AMERSFOORT", "location.postal_code"),
    ],
)
def test_cdr_nested_refusal_names_the_path(path: tuple[str | int, ...], value: object, field: str) -> None:
    body = load("cdr_full.json")
    target: Any = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert field_of(refused(CDR_POST, body)) == field


def test_tariff_restrictions_are_checked() -> None:
    body = load("cdr_full.json")
    element = body["tariffs"][0]["elements"][0]
    element["restrictions"] = {"start_time": "22:00", "end_time": "06:00", "day_of_week": ["MONDAY", "MON"]}
    assert field_of(refused(CDR_POST, body)) == "tariffs[0].elements[0].restrictions.day_of_week[1]"
    element["restrictions"] = {"start_date": "2024-02-30"}
    assert field_of(refused(CDR_POST, body)) == "tariffs[0].elements[0].restrictions.start_date"
    element["restrictions"] = {"start_date": "2024-03-01", "max_duration": 3600, "min_kwh": 0.5}
    run(CDR_POST, body)


def test_tariff_module_put_is_validated_as_a_tariff() -> None:
    tariff = load("cdr_full.json")["tariffs"][0]
    push = ("tariffs", "tariff", "PUT", {"id": tariff["id"]})
    assert run(push, tariff) == tariff
    tariff["elements"] = None
    assert refused(push, tariff).message == "elements: must not be null"


@pytest.mark.parametrize("body", [[], "x", None, 3], ids=["list", "string", "null", "number"])
def test_body_that_is_not_an_object_is_refused(body: object) -> None:
    assert refused(SESSION_PUT, body).message == "body: must be a JSON object"


# ---------------------------------------------------------------------------------------------
# Enum policy


@pytest.mark.parametrize(
    ("field", "value"),
    [("standard", "GBT_DC"), ("standard", "NEMA_14_50"), ("power_type", "AC_2_PHASE_SPLIT")],
)
def test_added_2_2_1_connector_values_are_accepted(field: str, value: str) -> None:
    body = load("connector_put.json")
    body[field] = value
    assert run(CONNECTOR_PUT, body)[field] == value


def test_enum_values_are_case_sensitive() -> None:
    body = load("connector_put.json")
    body["standard"] = "chademo"
    assert field_of(refused(CONNECTOR_PUT, body)) == "standard"


def test_unknown_values_in_optional_enum_lists_are_kept() -> None:
    body = load("location_full.json")
    body["facilities"] = ["MALL", "EV_LOUNGE"]
    body["evses"][0]["capabilities"] = ["RFID_READER", "PED_TERMINAL", "SOLAR_CANOPY"]
    body["evses"][0]["parking_restrictions"] = ["EV_ONLY", "TAXI"]
    out = run(LOCATION_PUT, body)
    assert out["facilities"] == ["MALL", "EV_LOUNGE"]
    assert out["evses"][0]["capabilities"] == ["RFID_READER", "PED_TERMINAL", "SOLAR_CANOPY"]
    assert out["evses"][0]["parking_restrictions"] == ["EV_ONLY", "TAXI"]


def test_unknown_value_in_a_required_enum_is_refused_in_both_modes() -> None:
    for strict in (False, True):
        assert field_of(refused(EVSE_PATCH, {"status": "OCCUPIED"}, strict=strict)) == "status"


# ---------------------------------------------------------------------------------------------
# 2.2 spellings


def test_session_with_2_2_spellings_is_accepted_without_the_2_1_1_ones() -> None:
    body = load("session_completed.json")
    body["start_date_time"] = body.pop("start_datetime")
    body["end_date_time"] = body.pop("end_datetime")
    body["cdr_token"] = {"uid": "04A7C2E9B15D80", "type": "RFID", "contract_id": body.pop("auth_id")}
    body["total_cost"] = {"excl_vat": 10.6728, "incl_vat": 12.91}
    out = run(SESSION_PUT, body)
    assert out["total_cost"] == {"excl_vat": 10.6728, "incl_vat": 12.91}


def test_session_without_any_start_spelling_names_the_2_1_1_field() -> None:
    body = load("session_active.json")
    del body["start_datetime"]
    assert refused(SESSION_PUT, body).message == "start_datetime: is required"


def test_2_2_end_spelling_is_checked_against_the_start() -> None:
    body = load("session_active.json")
    body["end_date_time"] = "2024-03-05T08:00:00Z"
    assert field_of(refused(SESSION_PUT, body)) == "end_date_time"


def test_connector_with_2_2_spellings_is_accepted() -> None:
    body = load("connector_put.json")
    body["max_voltage"] = body.pop("voltage")
    body["max_amperage"] = body.pop("amperage")
    body["tariff_ids"] = [body.pop("tariff_id")]
    out = run(CONNECTOR_PUT, body)
    assert out["tariff_ids"] == ["GFX-DC-0.59-NIGHT"]


def test_null_2_1_1_spelling_is_refused_when_no_2_2_spelling_stands_in() -> None:
    body = load("connector_put.json")
    body["voltage"] = None
    assert refused(CONNECTOR_PUT, body).message == "voltage: must not be null"
    body["max_voltage"] = 500
    run(CONNECTOR_PUT, body)
    assert refused(("sessions", "session", "PATCH", {}), {"start_datetime": None}).message == (
        "start_datetime: must not be null"
    )


def test_connector_without_any_voltage_spelling_is_refused() -> None:
    body = load("connector_put.json")
    del body["voltage"]
    assert refused(CONNECTOR_PUT, body).message == "voltage: is required"


def test_cdr_with_2_2_spellings_is_accepted() -> None:
    body = load("cdr_full.json")
    body["end_date_time"] = body.pop("stop_date_time")
    loc = body.pop("location")
    body["cdr_location"] = {
        "id": loc["id"],
        "address": loc["address"],
        "city": loc["city"],
        "country": loc["country"],
        "coordinates": {"latitude": 52.160418, "longitude": 5.381967},
        "evse_uid": "NL-GFX-E0873422-1",
        "evse_id": "NL*GFX*E0873422*1",
        "connector_id": "1",
        "connector_standard": "IEC_62196_T2",
        "connector_format": "SOCKET",
        "connector_power_type": "AC_3_PHASE",
    }
    body["total_cost"] = {"excl_vat": 10.6728}
    out = run(CDR_POST, body)
    assert out["cdr_location"]["coordinates"] == {"latitude": "52.160418", "longitude": "5.381967"}


def test_price_object_with_negative_amount_is_refused() -> None:
    body = load("cdr_full.json")
    body["total_cost"] = {"excl_vat": -1}
    assert field_of(refused(CDR_POST, body)) == "total_cost.excl_vat"


# ---------------------------------------------------------------------------------------------
# parse_datetime / format_datetime


def test_parse_datetime_returns_aware_utc() -> None:
    dt = parse_datetime("2024-03-05T09:14:02.5+01:00", "start_datetime")
    assert dt == datetime(2024, 3, 5, 8, 14, 2, 500000, tzinfo=UTC)
    assert dt.utcoffset() == timedelta(0)


def test_parse_datetime_without_designator_means_utc() -> None:
    assert parse_datetime("2024-03-05T08:14:02", "x") == datetime(2024, 3, 5, 8, 14, 2, tzinfo=UTC)


def test_parse_datetime_refusal_names_the_field() -> None:
    with pytest.raises(OcpiError) as info:
        parse_datetime("2024-03-05 08:14", "last_updated")
    assert field_of(info.value) == "last_updated"


def test_parse_datetime_strict_refuses_offsets_but_not_zero_offset() -> None:
    assert parse_datetime("2024-03-05T08:14:02+00:00", "f", strict=True).hour == 8
    with pytest.raises(OcpiError) as info:
        parse_datetime("2024-03-05T09:14:02+01:00", "f", strict=True)
    assert field_of(info.value) == "f"


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2024, 3, 5, 8, 14, 2, tzinfo=UTC), "2024-03-05T08:14:02Z"),
        (datetime(2024, 3, 5, 8, 14, 2, 120000, tzinfo=UTC), "2024-03-05T08:14:02.12Z"),
        (datetime(2024, 3, 5, 8, 14, 2, 123456, tzinfo=UTC), "2024-03-05T08:14:02.123456Z"),
        (datetime(2024, 3, 5, 9, 14, 2, tzinfo=timezone(timedelta(hours=1))), "2024-03-05T08:14:02Z"),
        (datetime(2024, 3, 5, 8, 14, 2), "2024-03-05T08:14:02Z"),
    ],
)
def test_format_datetime_writes_utc_with_z_and_minimal_fraction(dt: datetime, text: str) -> None:
    assert format_datetime(dt) == text


def test_format_and_parse_round_trip() -> None:
    dt = datetime(2024, 3, 5, 8, 14, 2, 481700, tzinfo=UTC)
    assert parse_datetime(format_datetime(dt), "x") == dt


# ---------------------------------------------------------------------------------------------
# Path ids


def test_modules_are_the_forwarding_yaml_names() -> None:
    assert MODULES == (
        "locations",
        "sessions",
        "cdrs",
        "tariffs",
        "chargestationnotifications",
        "notifications",
    )


def test_valid_path_ids_pass() -> None:
    check_path_ids("locations", "NL", "GFX", [LOC_ID, "NL-GFX-E0873422-1", "1"])
    check_path_ids("locations", "NL", "GFX", ["x" * 39, "y" * 39, "z" * 36])
    check_path_ids("sessions", "NL", "GFX", [SESSION_ID])
    check_path_ids("tariffs", "NL", "GFX", ["GFX-AC-0.45"])
    check_path_ids("cdrs", None, None, ["NLGFX-CDR-20240305-000417"])
    check_path_ids("cdrs", None, None, [])
    check_path_ids("notifications", None, None, ["918273"])


@pytest.mark.parametrize(
    ("module", "cc", "party", "ids", "field"),
    [
        ("locations", "NLD", "GFX", [LOC_ID], "country_code"),
        ("locations", "N", "GFX", [LOC_ID], "country_code"),
        ("locations", "N/", "GFX", [LOC_ID], "country_code"),
        ("locations", None, "GFX", [LOC_ID], "country_code"),
        ("locations", "NL", "GF", [LOC_ID], "party_id"),
        ("locations", "NL", "GFXX", [LOC_ID], "party_id"),
        ("locations", "NL", "G X", [LOC_ID], "party_id"),
        ("locations", "NL", "GFX", ["x" * 40], "location_id"),
        ("locations", "NL", "GFX", [""], "location_id"),
        ("locations", "NL", "GFX", [], "location_id"),
        ("locations", "NL", "GFX", [LOC_ID, "e" * 40], "evse_uid"),
        ("locations", "NL", "GFX", [LOC_ID, "EVSE 1"], "evse_uid"),
        ("locations", "NL", "GFX", [LOC_ID, "evse", "c" * 37], "connector_id"),
        ("locations", "NL", "GFX", [LOC_ID, "evse", "1?x=2"], "connector_id"),
        ("sessions", "NL", "GFX", ["s" * 37], "session_id"),
        ("sessions", "NL", "GFX", ["a/b"], "session_id"),
        ("sessions", "NL", "GFX", ["a%2Fb"], "session_id"),
        ("sessions", "NL", "GFX", ["a#b"], "session_id"),
        ("sessions", "NL", "GFX", ["a\tb"], "session_id"),
        ("sessions", "NL", "GFX", ["a\x00b"], "session_id"),
        ("sessions", "NL", "GFX", ["sessié"], "session_id"),
        ("tariffs", "NL", "GFX", ["t" * 37], "tariff_id"),
        ("cdrs", None, None, ["c" * 37], "cdr_id"),
    ],
)
def test_bad_path_segment_is_refused_naming_it(
    module: str, cc: str | None, party: str | None, ids: list[str], field: str
) -> None:
    with pytest.raises(OcpiError) as info:
        check_path_ids(module, cc, party, ids)
    assert (info.value.http_status, info.value.status_code) == (400, INVALID_PARAMS)
    assert field_of(info.value) == field, info.value.message


def test_extra_path_segment_is_not_found() -> None:
    with pytest.raises(OcpiError) as info:
        check_path_ids("locations", "NL", "GFX", ["a", "b", "c", "d"])
    assert info.value.http_status == 404


# ---------------------------------------------------------------------------------------------
# Notifications: no published schema


def test_notification_body_is_returned_as_a_copy_without_field_checks() -> None:
    body = load("chargestationnotification_station_fault.json")
    out = validate_object("notifications", "notification", "PUT", body, {})
    assert out == body
    assert out is not body


@pytest.mark.parametrize(
    ("module", "cc", "party", "ids", "field"),
    [
        ("locations", "NL", "GFX", ["."], "location_id"),
        ("locations", "NL", "GFX", [".."], "location_id"),
        ("locations", "NL", "GFX", [LOC_ID, ".."], "evse_uid"),
        ("locations", "NL", "GFX", [LOC_ID, "E1", "."], "connector_id"),
        ("locations", "..", "GFX", [LOC_ID], "country_code"),
        ("locations", "N1", "GFX", [LOC_ID], "country_code"),
        ("locations", "NL", "...", [LOC_ID], "party_id"),
        ("locations", "NL", "G-X", [LOC_ID], "party_id"),
        ("sessions", "NL", "GFX", ["a\x7fb"], "session_id"),
        ("sessions", "NL", "GFX", ["a\x85b"], "session_id"),
        ("notifications", None, None, ["n" * 65], "notification_id"),
        ("chargestationnotifications", None, None, [".."], "notification_id"),
    ],
)
def test_dot_segments_control_characters_and_bad_cpo_codes_are_refused(
    module: str, cc: str | None, party: str | None, ids: list[str], field: str
) -> None:
    with pytest.raises(OcpiError) as info:
        check_path_ids(module, cc, party, ids)
    assert (info.value.http_status, info.value.status_code) == (400, INVALID_PARAMS)
    assert field_of(info.value) == field, info.value.message


def test_ids_with_dots_inside_and_digit_parties_are_fine() -> None:
    check_path_ids("locations", "NL", "G42", ["a.b", "...x", "1"])
    check_path_ids("chargestationnotifications", None, None, ["n" * 64])
