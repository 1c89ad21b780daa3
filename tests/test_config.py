"""The TOML configuration: the demo city round trip and refusals that name the setting."""

from __future__ import annotations

import tomllib

import pytest

from clearing.errors import ConfigError
from clearing.runtime.config import dump_config, load_config, parse_config
from clearing.tools.demo_city import demo_config
from tests.conftest import city_dict


def test_demo_city_round_trips_through_toml(tmp_path):
    city = demo_config()
    text = dump_config(city)
    assert 'class = "VALIDATOR"' in text and "[[principals]]" in text
    path = tmp_path / "city.toml"
    path.write_text(text)
    assert load_config(str(path)) == city
    roles = [p.role for p in city.parties]
    assert (roles.count("OPERATOR"), roles.count("MERCHANT"), roles.count("UTILITY")) == (3, 600, 4)
    assert (roles.count("AGENT"), roles.count("HALL"), city.seed.cards) == (42, 5, 210_000)


def test_spec_defaults_hold_when_a_file_says_nothing():
    config = parse_config({})
    assert config.server.listen == "127.0.0.1:50051"
    assert (config.server.timezone, config.server.cutoff) == ("Asia/Shanghai", "04:00")
    assert (config.limits.max_tap_fen, config.limits.max_late_days) == (100_000, 7)
    assert config.rules.concession_bp == {
        "ADULT": 10_000, "STUDENT": 5_000, "ELDERLY": 0, "DISABLED": 0
    }  # fmt: skip
    assert (config.rules.transfer_window_s, config.rules.transfer_discount_fen) == (5_400, 100)
    assert (config.rules.liability_window_s, config.rules.transfer_hold_s) == (21_600, 604_800)


def _broken(edit) -> str:
    raw = city_dict("var")
    edit(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda r: r["server"].update(timezone="Mars/Olympus"), "timezone"),
        (lambda r: r["server"].update(cutoff="4am"), "cutoff"),
        (lambda r: r.update(limits={"max_tap_fen": 0}), "max_tap_fen"),
        (lambda r: r.update(limits={"max_batch_taps": 10**9}), "max_batch_taps"),
        (lambda r: r.update(rules={"concession_bp": {"ADULT": 10_000}}), "concession_bp"),
        (lambda r: r["parties"][1].update(discount_bp=5_000), "discount_bp"),
        (lambda r: r["parties"].append(dict(r["parties"][0])), "duplicate party"),
        (lambda r: r["terminals"][0].update(party="m-0001"), "must be an OPERATOR"),
        (lambda r: r["terminals"][0].update(key_hex="abc"), "key_hex"),
        (lambda r: r["terminals"][1].update(id=r["terminals"][0]["id"]), "duplicate terminal"),
        (lambda r: r["principals"][0].update(token=r["principals"][1]["token"]), "share a token"),
        (lambda r: r["server"].update(listne="x"), "listne"),
    ],
)
def test_bad_settings_are_refused_by_name(edit, named):
    assert named in _broken(edit)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    assert tomllib.loads(dump_config(parse_config({})))["server"]["manual_clock"] is False
