"""save_json writes strict JSON: NaN becomes null, and null reads back as NaN into float fields."""
import json
import math
from dataclasses import dataclass, field

import pytest

from autoseg.serialization import SchemaError, load_json_as, save_json


@dataclass(frozen=True)
class Scores:
    name: str
    dice: float
    per_class: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def test_nan_is_written_as_null_and_read_back_as_nan(tmp_path):
    import numpy as np

    path = tmp_path / "s.json"
    save_json(Scores("a", math.nan, {"1": 0.5, "2": np.float64("nan")}), path)
    text = path.read_text()
    assert "NaN" not in text
    raw = json.loads(text)
    assert raw["dice"] is None and raw["per_class"] == {"1": 0.5, "2": None} and raw["note"] is None
    back = load_json_as(Scores, path)
    assert math.isnan(back.dice) and math.isnan(back.per_class["2"]) and back.per_class["1"] == 0.5
    assert back.note is None  # an optional field keeps its None


def test_other_fields_still_refuse_null(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": None, "dice": 1.0}))
    with pytest.raises(SchemaError, match="name: expected a string, found None"):
        load_json_as(Scores, path)
