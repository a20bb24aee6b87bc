"""CF attributes of the exported variables come from the one field catalogue (atmorep.fields)."""

import pytest

from atmorep import fields
from atmorep.eval import cf

# The CF standard-name table's names for the fields we export (lat-lon winds are eastward/northward).
EXPECTED = {
    "t2m": "air_temperature",
    "d2m": "dew_point_temperature",
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "msl": "air_pressure_at_mean_sea_level",
    "sp": "surface_air_pressure",
    "tp": "lwe_thickness_of_precipitation_amount",
    "t": "air_temperature",
    "u": "eastward_wind",
    "v": "northward_wind",
    "w": "lagrangian_tendency_of_air_pressure",
    "z": "geopotential",
    "q": "specific_humidity",
    "r": "relative_humidity",
    "vo": "atmosphere_relative_vorticity",
    "d": "divergence_of_wind",
}


@pytest.mark.parametrize("field", sorted(EXPECTED))
def test_standard_names_come_from_the_catalogue(field):
    a = cf.attrs(field, "forecast of")
    assert a["standard_name"] == EXPECTED[field] == fields.info(field).standard_name
    assert a["long_name"] == f"forecast of {fields.info(field).long_name}" and a["units"] == cf.units(field)


def test_a_field_without_a_standard_name_has_none_rather_than_a_guess():
    # skin temperature: ecCodes knows the parameter, the CF table has no name for it in ecCodes' database
    info = fields.info("skt")
    assert info is not None
    a = cf.attrs("skt")
    assert a.get("standard_name") == info.standard_name and a["long_name"] == info.long_name
    assert "standard_name" not in cf.attrs("not_a_field") and cf.attrs("not_a_field")["long_name"] == "not_a_field"
