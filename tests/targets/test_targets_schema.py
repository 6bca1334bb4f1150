"""The catalog schema: every shipped file validates; bad files fail naming file, field and fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeshift.errors import ConfigError, TargetError
from edgeshift.targets.catalog import CATALOG_DIR, get_target, load_catalog, load_target_file
from edgeshift.targets.schema import TIERS, ByteQuantity, Quantity

CATALOG_FILES = sorted(CATALOG_DIR.glob("*.yaml"))


def _numbers(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every {value: ...} mapping in a raw YAML document, with its dotted path."""
    found = []
    if isinstance(obj, dict):
        if "value" in obj:
            found.append((path, obj))
        for k, v in obj.items():
            found.extend(_numbers(v, f"{path}.{k}" if path else str(k)))
    return found


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
def test_every_catalog_file_validates_and_sources_every_number(path: Path) -> None:
    target = load_target_file(path)
    assert target.id == path.stem
    raw = yaml.safe_load(path.read_text())
    numbers = _numbers(raw)
    assert len(numbers) >= 10
    for field, q in numbers:
        provenance = [k for k in ("source", "derived") if q.get(k)]
        assert len(provenance) == 1, f"{path.name}: {field} needs exactly one source/derived"
    # What the planner relies on is always there.
    assert target.ram_bytes > 0 and target.power_active_w >= target.power_idle_w > 0
    assert target.is_rented == (target.usd_per_hour is not None)
    if not target.is_rented:
        assert target.purchase_usd and target.lifetime_years
    assert all(target.peak(p) > 0 for p in target.precisions)


def test_catalog_covers_the_tiers_the_issue_names() -> None:
    catalog = load_catalog()
    assert len(catalog) >= 16
    by_tier = {tier: [t for t in catalog.values() if t.tier == tier] for tier in TIERS}
    assert all(len(v) >= 3 for v in by_tier.values()), {k: len(v) for k, v in by_tier.items()}
    for wanted in ("stm32f4", "stm32h7", "esp32-s3", "nrf52840", "rpi4", "rpi5", "intel-n100"):
        assert wanted in catalog
    simd = {s for t in catalog.values() for s in t.simd}
    assert {"amx", "avx512", "vnni", "neon", "dotprod", "i8mm", "sve", "dsp"} <= simd
    assert all(t.flash_bytes for t in by_tier["mcu"])
    assert all(t.host_link_gbs is not None for t in by_tier["gpu"])


def test_hand_checked_catalog_numbers() -> None:
    # 4 cores * 2.4 GHz * 16 FLOP/cycle; 4267 MT/s * 4 bytes; 8 GiB.
    rpi5 = get_target("rpi5")
    assert rpi5.peak("fp32") == pytest.approx(153.6)
    assert rpi5.mem_bandwidth_gbs.value == pytest.approx(17.07, rel=1e-3)
    assert rpi5.ram_bytes == 8 << 30
    assert get_target("stm32f4").ram_bytes == 192 * 1024
    assert get_target("aws-m7i-2xlarge").usd_per_hour == pytest.approx(0.4032)


@pytest.fixture
def good() -> dict[str, Any]:
    return yaml.safe_load((CATALOG_DIR / "rpi5.yaml").read_text())


def _write(tmp_path: Path, data: dict[str, Any], name: str = "rpi5") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_field_names_file_field_and_fix(tmp_path: Path, good: dict[str, Any]) -> None:
    del good["power"]["idle_w"]
    with pytest.raises(ConfigError) as err:
        load_target_file(_write(tmp_path, good))
    msg = str(err.value)
    assert "rpi5.yaml" in msg and "power.idle_w" in msg and "missing" in msg
    assert "add `power.idle_w:" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [0, -1.5])
def test_non_positive_number_fails(tmp_path: Path, good: dict[str, Any], bad: float) -> None:
    good["mem_bandwidth_gbs"]["value"] = bad
    with pytest.raises(ConfigError, match=r"rpi5.yaml: mem_bandwidth_gbs.value must be positive"):
        load_target_file(_write(tmp_path, good))


def test_number_without_provenance_fails(tmp_path: Path, good: dict[str, Any]) -> None:
    del good["clock_ghz"]["source"]
    with pytest.raises(ConfigError, match=r"clock_ghz: give exactly one of `source"):
        load_target_file(_write(tmp_path, good))


def test_bare_number_fails(tmp_path: Path, good: dict[str, Any]) -> None:
    good["cores"] = 4
    with pytest.raises(ConfigError, match=r"rpi5.yaml: cores"):
        load_target_file(_write(tmp_path, good))


def test_both_source_and_derived_fails() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Quantity(value=1, source="a", derived="b")


def test_sizes_parse_with_units() -> None:
    assert ByteQuantity(value="512 KiB", source="x").bytes == 512 * 1024
    assert ByteQuantity(value="1.5 GiB", source="x").bytes == 3 << 29
    assert ByteQuantity(value=1000, source="x").bytes == 1000
    with pytest.raises(ValueError, match="not like"):
        ByteQuantity(value="lots", source="x")


def test_price_must_be_owned_or_rented(tmp_path: Path, good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["price"]["usd_per_hour"] = {"value": 1.0, "source": "x"}
    with pytest.raises(ConfigError, match="either purchase_usd and lifetime_years"):
        load_target_file(_write(tmp_path, bad))
    del good["price"]["lifetime_years"]
    with pytest.raises(ConfigError, match="price"):
        load_target_file(_write(tmp_path, good))


def test_precision_without_peak_fails(tmp_path: Path, good: dict[str, Any]) -> None:
    good["precisions"].append("bf16")
    with pytest.raises(ConfigError, match="peak_gops has no entry"):
        load_target_file(_write(tmp_path, good))


def test_mcu_needs_flash(tmp_path: Path) -> None:
    data = yaml.safe_load((CATALOG_DIR / "stm32f4.yaml").read_text())
    del data["flash"]
    with pytest.raises(ConfigError, match="needs `flash`"):
        load_target_file(_write(tmp_path, data, "stm32f4"))


def test_id_must_match_file_name(tmp_path: Path, good: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_target_file(_write(tmp_path, good, "pi-five"))


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_target_file(path)


def test_catalog_directory_with_a_bad_file_fails(tmp_path: Path, good: dict[str, Any]) -> None:
    good["cores"]["value"] = -4
    _write(tmp_path, good)
    with pytest.raises(ConfigError, match="cores.value must be positive"):
        load_catalog(tmp_path)


@pytest.mark.parametrize(
    ("wrong", "suggested"),
    [("rpi", "rpi5"), ("raspberry-pi-5", "rpi5"), ("stm32h8", "stm32h7"), ("h100", "aws-p5-h100")],
)
def test_unknown_target_suggests_nearest(wrong: str, suggested: str) -> None:
    with pytest.raises(TargetError) as err:
        get_target(wrong)
    assert suggested in str(err.value) and "edgeshift targets" in str(err.value)
