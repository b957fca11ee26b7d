import textwrap
from pathlib import Path

import pytest

from mailfleet.mta.config import ConfigError, EngineConfig, load_config, parse_config
from mailfleet.mta.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("3d", 259200), (12, 12.0)],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "5x", "-1s", "m5", True, -3, None])
def test_bad_durations_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0, 0.5, 1, 59, 60, 61, 3600, 5400, 86400, 259200])
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_sizes() -> None:
    assert parse_size("25Mi") == 25 * 1024 * 1024
    assert parse_size("10M") == 10_000_000
    assert parse_size(512) == 512
    with pytest.raises(ValueError, match="not a size"):
        parse_size("ten")


def test_rendered_config_reads_back_identically() -> None:
    cfg = parse_config(
        {
            "hostname": "mta1.example.com",
            "retry": {"initial": "1m", "max": "2h", "maxAge": "1d"},
            "routing": {"routes": {"*": "127.0.0.1:2526"}},
            "delivery": {"sourceIPs": [{"address": "127.0.0.2", "hostname": "a.test"}]},
        }
    )
    import yaml

    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert "sourceIPs" in cfg.to_yaml()


def test_errors_name_every_bad_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent(
            """
            submision: {}
            retry: {initial: soon}
            delivery: {sourceIPs: [{address: 300.1.1.1}]}
            routing: {routes: {example.com: "host:notaport"}}
            """
        )
    )
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert str(f) in text
    assert "submision: unknown field" in text
    assert "retry.initial:" in text and "'soon' is not a duration" in text
    assert "delivery.sourceIPs.0.address" in text
    assert "routes['example.com']" in text


def test_auth_requires_tls() -> None:
    with pytest.raises(ConfigError, match=r"authUsersFile needs submission.tls"):
        parse_config({"submission": {"authUsersFile": "/etc/users"}})


def test_retry_order_checked() -> None:
    with pytest.raises(ConfigError, match=r"retry\.max must be at least retry\.initial"):
        parse_config({"retry": {"initial": "1h", "max": "1m"}})


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "x.yaml"
    f.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    f.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(f)


def test_defaults_are_safe() -> None:
    cfg = EngineConfig()
    assert [str(n) for n in cfg.submission.trusted_networks] == ["127.0.0.1/32"]
    assert cfg.submission.auth_users_file is None
