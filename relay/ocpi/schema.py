"""OCPI 2.1.1 field tables (plus the 2.2/2.2.1 spellings a liberal receiver meets), as plain data.

``relay.ocpi.validate`` compiles these tables once at import. A field is
``name: (kind, arg, card)``; kinds are the strings of ``validate._KINDS``; ``card`` is
``REQ`` (1 in the spec), ``OPT`` (? or *), or the name of the 2.1.1 field this 2.2 spelling
stands in for (the pair is then required together: one of them must be there).
"""

from __future__ import annotations

from typing import Any

REQ = 1
OPT = 0


def _values(text: str) -> frozenset[str]:
    return frozenset(text.split())


ENUMS: dict[str, frozenset[str]] = {
    "LocationType": _values("ON_STREET PARKING_GARAGE UNDERGROUND_GARAGE PARKING_LOT OTHER UNKNOWN"),
    "Status": _values("AVAILABLE BLOCKED CHARGING INOPERATIVE OUTOFORDER PLANNED REMOVED RESERVED UNKNOWN"),
    # 2.1.1 values, then the 2.2.1 additions (brief §3.6) that a liberal receiver accepts.
    "Capability": _values(
        "CHARGING_PROFILE_CAPABLE CREDIT_CARD_PAYABLE REMOTE_START_STOP_CAPABLE RESERVABLE RFID_READER"
        " UNLOCK_CAPABLE"
        " CHARGING_PREFERENCES_CAPABLE CHIP_CARD_SUPPORT CONTACTLESS_CARD_SUPPORT DEBIT_CARD_PAYABLE"
        " PED_TERMINAL START_SESSION_CONNECTOR_REQUIRED TOKEN_GROUP_CAPABLE"
    ),
    "ConnectorFormat": _values("SOCKET CABLE"),
    "ConnectorType": _values(
        "CHADEMO DOMESTIC_A DOMESTIC_B DOMESTIC_C DOMESTIC_D DOMESTIC_E DOMESTIC_F DOMESTIC_G DOMESTIC_H"
        " DOMESTIC_I DOMESTIC_J DOMESTIC_K DOMESTIC_L IEC_60309_2_single_16 IEC_60309_2_three_16"
        " IEC_60309_2_three_32 IEC_60309_2_three_64 IEC_62196_T1 IEC_62196_T1_COMBO IEC_62196_T2"
        " IEC_62196_T2_COMBO IEC_62196_T3A IEC_62196_T3C TESLA_R TESLA_S"
        " CHAOJI DOMESTIC_M DOMESTIC_N DOMESTIC_O GBT_AC GBT_DC NEMA_5_20 NEMA_6_30 NEMA_6_50 NEMA_10_30"
        " NEMA_10_50 NEMA_14_30 NEMA_14_50 PANTOGRAPH_BOTTOM_UP PANTOGRAPH_TOP_DOWN"
    ),
    "PowerType": _values("AC_1_PHASE AC_3_PHASE DC AC_2_PHASE AC_2_PHASE_SPLIT"),
    "Facility": _values(
        "HOTEL RESTAURANT CAFE MALL SUPERMARKET SPORT RECREATION_AREA NATURE MUSEUM BUS_STOP TAXI_STAND"
        " TRAIN_STATION AIRPORT CARPOOL_PARKING FUEL_STATION WIFI"
        " BIKE_SHARING TRAM_STOP METRO_STATION PARKING_LOT"
    ),
    "ParkingRestriction": _values("EV_ONLY PLUGGED DISABLED CUSTOMERS MOTORCYCLES"),
    "ImageCategory": _values("CHARGER ENTRANCE LOCATION NETWORK OPERATOR OTHER OWNER"),
    "EnergySourceCategory": _values("NUCLEAR GENERAL_FOSSIL COAL GAS GENERAL_GREEN SOLAR WIND WATER"),
    "EnvironmentalImpactCategory": _values("NUCLEAR_WASTE CARBON_DIOXIDE"),
    # 2.2 adds RESERVATION, COMMAND and the extra dimension types (brief §5.3, §10).
    "SessionStatus": _values("ACTIVE COMPLETED INVALID PENDING RESERVATION"),
    "AuthMethod": _values("AUTH_REQUEST WHITELIST COMMAND"),
    "CdrDimensionType": _values(
        "ENERGY FLAT MAX_CURRENT MIN_CURRENT PARKING_TIME TIME"
        " CURRENT ENERGY_EXPORT ENERGY_IMPORT MAX_POWER MIN_POWER POWER RESERVATION_TIME STATE_OF_CHARGE"
    ),
    "TariffDimensionType": _values("ENERGY FLAT PARKING_TIME TIME"),
    "DayOfWeek": _values("MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY"),
    "TokenType": _values("AD_HOC_USER APP_USER OTHER RFID"),
}

# Kinds: str (max length), id (non-empty, path-safe ASCII, max length), enum, enums (optional list of
# enum values; arg (enum, keep_unknown)), datetime, number / int (arg (min, max) or None), bool,
# obj / list / list+ (arg: object name), lat, lon, hhmm, date, cost (number or 2.2 Price),
# country, currency, language, strs (list of str(n)), label (str(n); liberal also takes a number).
_URL = ("str", 255)
_DT_REQ = ("datetime", None, REQ)
_NONNEG = (0, None)

OBJECTS: dict[str, dict[str, tuple[str, Any, Any]]] = {
    "Location": {
        "id": ("id", 39, REQ),
        "type": ("enum", "LocationType", REQ),
        "name": ("str", 255, OPT),
        "address": ("str", 45, REQ),
        "city": ("str", 45, REQ),
        "postal_code": ("str", 10, REQ),
        "country": ("country", None, REQ),
        "coordinates": ("obj", "GeoLocation", REQ),
        "related_locations": ("list", "AdditionalGeoLocation", OPT),
        "evses": ("list", "EVSE", OPT),
        "directions": ("list", "DisplayText", OPT),
        "operator": ("obj", "BusinessDetails", OPT),
        "suboperator": ("obj", "BusinessDetails", OPT),
        "owner": ("obj", "BusinessDetails", OPT),
        "facilities": ("enums", ("Facility", True), OPT),
        "time_zone": ("str", 255, OPT),
        "opening_times": ("obj", "Hours", OPT),
        "charging_when_closed": ("bool", None, OPT),
        "images": ("list", "Image", OPT),
        "energy_mix": ("obj", "EnergyMix", OPT),
        "last_updated": _DT_REQ,
        # 2.2 party fields (CiString(2) / CiString(3)).
        "country_code": ("str", 2, OPT),
        "party_id": ("str", 3, OPT),
    },
    "EVSE": {
        "uid": ("id", 39, REQ),
        "evse_id": ("str", 48, OPT),
        "status": ("enum", "Status", REQ),
        "status_schedule": ("list", "StatusSchedule", OPT),
        "capabilities": ("enums", ("Capability", True), OPT),
        "connectors": ("list+", "Connector", REQ),
        "floor_level": ("label", 4, OPT),
        "coordinates": ("obj", "GeoLocation", OPT),
        "physical_reference": ("label", 16, OPT),
        "directions": ("list", "DisplayText", OPT),
        "parking_restrictions": ("enums", ("ParkingRestriction", True), OPT),
        "images": ("list", "Image", OPT),
        "last_updated": _DT_REQ,
    },
    "Connector": {
        "id": ("id", 36, REQ),
        "standard": ("enum", "ConnectorType", REQ),
        "format": ("enum", "ConnectorFormat", REQ),
        "power_type": ("enum", "PowerType", REQ),
        "voltage": ("int", _NONNEG, REQ),
        "amperage": ("int", _NONNEG, REQ),
        "tariff_id": ("str", 36, OPT),
        "terms_and_conditions": (*_URL, OPT),
        "last_updated": _DT_REQ,
        "max_voltage": ("int", _NONNEG, "voltage"),
        "max_amperage": ("int", _NONNEG, "amperage"),
        "max_electric_power": ("int", _NONNEG, OPT),
        "tariff_ids": ("strs", 36, OPT),
    },
    "GeoLocation": {
        "latitude": ("lat", None, REQ),
        "longitude": ("lon", None, REQ),
    },
    "AdditionalGeoLocation": {
        "latitude": ("lat", None, REQ),
        "longitude": ("lon", None, REQ),
        "name": ("obj", "DisplayText", OPT),
    },
    "DisplayText": {
        "language": ("language", None, REQ),
        "text": ("str", 512, REQ),
    },
    "BusinessDetails": {
        "name": ("str", 100, REQ),
        "website": (*_URL, OPT),
        "logo": ("obj", "Image", OPT),
    },
    "Image": {
        "url": (*_URL, REQ),
        "thumbnail": (*_URL, OPT),
        "category": ("enum", "ImageCategory", REQ),
        "type": ("str", 4, REQ),
        "width": ("int", (0, 99999), OPT),
        "height": ("int", (0, 99999), OPT),
    },
    "Hours": {
        "regular_hours": ("list", "RegularHours", OPT),
        "twentyfourseven": ("bool", None, OPT),
        "exceptional_openings": ("list", "ExceptionalPeriod", OPT),
        "exceptional_closings": ("list", "ExceptionalPeriod", OPT),
    },
    "RegularHours": {
        "weekday": ("int", (1, 7), REQ),
        "period_begin": ("hhmm", None, REQ),
        "period_end": ("hhmm", None, REQ),
    },
    "ExceptionalPeriod": {
        "period_begin": _DT_REQ,
        "period_end": _DT_REQ,
    },
    "StatusSchedule": {
        "period_begin": _DT_REQ,
        "period_end": ("datetime", None, OPT),
        "status": ("enum", "Status", REQ),
    },
    "EnergyMix": {
        "is_green_energy": ("bool", None, REQ),
        "energy_sources": ("list", "EnergySource", OPT),
        "environ_impact": ("list", "EnvironmentalImpact", OPT),
        "supplier_name": ("str", 64, OPT),
        "energy_product_name": ("str", 64, OPT),
    },
    "EnergySource": {
        "source": ("enum", "EnergySourceCategory", REQ),
        "percentage": ("number", (0, 100), REQ),
    },
    "EnvironmentalImpact": {
        "source": ("enum", "EnvironmentalImpactCategory", REQ),
        "amount": ("number", _NONNEG, REQ),
    },
    "Session": {
        "id": ("id", 36, REQ),
        "start_datetime": _DT_REQ,
        "end_datetime": ("datetime", None, OPT),
        "kwh": ("number", _NONNEG, REQ),
        "auth_id": ("str", 36, REQ),
        "auth_method": ("enum", "AuthMethod", REQ),
        "location": ("obj", "Location", REQ),
        "meter_id": ("str", 255, OPT),
        "currency": ("currency", None, REQ),
        "charging_periods": ("list", "ChargingPeriod", OPT),
        "total_cost": ("cost", None, OPT),
        "status": ("enum", "SessionStatus", REQ),
        "last_updated": _DT_REQ,
        # 2.2 spellings and fields.
        "start_date_time": ("datetime", None, "start_datetime"),
        "end_date_time": ("datetime", None, OPT),
        "cdr_token": ("obj", "CdrToken", "auth_id"),
        "authorization_reference": ("str", 36, OPT),
        "location_id": ("str", 36, "location"),
        "evse_uid": ("str", 36, OPT),
        "connector_id": ("str", 36, OPT),
        "country_code": ("str", 2, OPT),
        "party_id": ("str", 3, OPT),
    },
    "CDR": {
        "id": ("id", 36, REQ),
        "start_date_time": _DT_REQ,
        "stop_date_time": _DT_REQ,
        "auth_id": ("str", 36, REQ),
        "auth_method": ("enum", "AuthMethod", REQ),
        "location": ("obj", "Location", REQ),
        "meter_id": ("str", 255, OPT),
        "currency": ("currency", None, REQ),
        "tariffs": ("list", "Tariff", OPT),
        "charging_periods": ("list+", "ChargingPeriod", REQ),
        "total_cost": ("cost", None, REQ),
        "total_energy": ("number", _NONNEG, REQ),
        "total_time": ("number", _NONNEG, REQ),
        "total_parking_time": ("number", _NONNEG, OPT),
        "remark": ("str", 255, OPT),
        "last_updated": _DT_REQ,
        # 2.2 spellings and fields.
        "end_date_time": ("datetime", None, "stop_date_time"),
        "cdr_token": ("obj", "CdrToken", "auth_id"),
        "cdr_location": ("obj", "CdrLocation", "location"),
        "session_id": ("str", 36, OPT),
        "authorization_reference": ("str", 36, OPT),
        "total_fixed_cost": ("cost", None, OPT),
        "total_energy_cost": ("cost", None, OPT),
        "total_time_cost": ("cost", None, OPT),
        "total_parking_cost": ("cost", None, OPT),
        "total_reservation_cost": ("cost", None, OPT),
        "country_code": ("str", 2, OPT),
        "party_id": ("str", 3, OPT),
    },
    "ChargingPeriod": {
        "start_date_time": _DT_REQ,
        "dimensions": ("list+", "CdrDimension", REQ),
        "tariff_id": ("str", 36, OPT),
    },
    "CdrDimension": {
        "type": ("enum", "CdrDimensionType", REQ),
        "volume": ("number", _NONNEG, REQ),
    },
    "Tariff": {
        "id": ("id", 36, REQ),
        "currency": ("currency", None, REQ),
        "tariff_alt_text": ("list", "DisplayText", OPT),
        "tariff_alt_url": (*_URL, OPT),
        "elements": ("list+", "TariffElement", REQ),
        "energy_mix": ("obj", "EnergyMix", OPT),
        "last_updated": _DT_REQ,
        "country_code": ("str", 2, OPT),
        "party_id": ("str", 3, OPT),
    },
    "TariffElement": {
        "price_components": ("list+", "PriceComponent", REQ),
        "restrictions": ("obj", "TariffRestrictions", OPT),
    },
    "PriceComponent": {
        "type": ("enum", "TariffDimensionType", REQ),
        "price": ("number", _NONNEG, REQ),
        "step_size": ("int", _NONNEG, REQ),
        "vat": ("number", _NONNEG, OPT),
    },
    "TariffRestrictions": {
        "start_time": ("hhmm", None, OPT),
        "end_time": ("hhmm", None, OPT),
        "start_date": ("date", None, OPT),
        "end_date": ("date", None, OPT),
        "min_kwh": ("number", _NONNEG, OPT),
        "max_kwh": ("number", _NONNEG, OPT),
        "min_power": ("number", _NONNEG, OPT),
        "max_power": ("number", _NONNEG, OPT),
        "min_duration": ("int", _NONNEG, OPT),
        "max_duration": ("int", _NONNEG, OPT),
        "day_of_week": ("enums", ("DayOfWeek", False), OPT),
    },
    # 2.2 objects met in liberal mode; unknown members are kept like everywhere else.
    "CdrToken": {
        "uid": ("str", 36, REQ),
        "type": ("enum", "TokenType", REQ),
        "contract_id": ("str", 36, REQ),
        "country_code": ("str", 2, OPT),
        "party_id": ("str", 3, OPT),
    },
    "CdrLocation": {
        "id": ("id", 36, REQ),
        "name": ("str", 255, OPT),
        "address": ("str", 45, OPT),
        "city": ("str", 45, OPT),
        "postal_code": ("str", 10, OPT),
        "state": ("str", 20, OPT),
        "country": ("country", None, OPT),
        "coordinates": ("obj", "GeoLocation", REQ),
        "evse_uid": ("str", 36, OPT),
        "evse_id": ("str", 48, OPT),
        "connector_id": ("str", 36, OPT),
        "connector_standard": ("enum", "ConnectorType", OPT),
        "connector_format": ("enum", "ConnectorFormat", OPT),
        "connector_power_type": ("enum", "PowerType", OPT),
    },
    "Price": {
        "excl_vat": ("number", _NONNEG, REQ),
        "incl_vat": ("number", _NONNEG, OPT),
    },
}

# (start field spellings, end field spellings): the end must not lie before the start (brief §13).
ORDER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Session": (("start_datetime", "start_date_time"), ("end_datetime", "end_date_time")),
    "CDR": (("start_date_time",), ("stop_date_time", "end_date_time")),
    "ExceptionalPeriod": (("period_begin",), ("period_end",)),
    "StatusSchedule": (("period_begin",), ("period_end",)),
}

# (module, level) -> object name validated at the top of a request body.
LEVELS: dict[tuple[str, str], str] = {
    ("locations", "location"): "Location",
    ("locations", "evse"): "EVSE",
    ("locations", "connector"): "Connector",
    ("sessions", "session"): "Session",
    ("cdrs", "cdr"): "CDR",
    ("tariffs", "tariff"): "Tariff",
}
