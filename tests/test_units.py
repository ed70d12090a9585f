import pytest

from autoseg.errors import UserFacingError
from autoseg.units import parse_duration


def test_parse_duration():
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == parse_duration("90") == 90
    assert parse_duration("2.5h") == 9000
    assert parse_duration("10min") == 600
    for bad in ("ten minutes", "30x", "0m", "m30", ""):
        with pytest.raises(UserFacingError, match="time-budget"):
            parse_duration(bad)


def test_parse_duration_names_the_option_it_reads():
    with pytest.raises(UserFacingError, match="--budget"):
        parse_duration("soon", option="--budget")
