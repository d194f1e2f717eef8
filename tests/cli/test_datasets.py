"""``stratus datasets put|get|ls|rm`` and ``stratus migrate`` against the cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stratus_client import Client

from tests.cli.conftest import Stratus, one_line
from tools.cluster import LocalCluster


def test_put_get_ls_rm(stratus: Stratus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "plate.bin"
    source.write_bytes(os.urandom(3 * 2**20 + 11))  # more than one chunk
    put = stratus.ok("datasets", "put", str(source), "study/plate.bin")
    assert "study/plate.bin" in put.stdout
    assert f"{source.stat().st_size} bytes" in put.stdout
    assert "MiB" in put.stderr  # the bar: bytes and rate
    stored = stratus.json("datasets", "put", str(source), "study/copy.bin", "--tier", "archive")
    assert (stored["name"], stored["size"], stored["tier"]) == (
        "study/copy.bin",
        source.stat().st_size,
        "archive",
    )
    assert stored["checksum"].startswith(("xxh3-128:", "blake3:"))

    listed = stratus.json("datasets", "ls", "--prefix", "study/")
    assert sorted(d["name"] for d in listed) == ["study/copy.bin", "study/plate.bin"]
    assert "study/plate.bin" in stratus.ok("datasets", "ls").stdout

    got = stratus.ok("datasets", "get", "study/plate.bin", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert "out.bin" in got.stdout
    monkeypatch.chdir(tmp_path)
    meta = stratus.json("datasets", "get", "study/copy.bin")  # into ./copy.bin
    assert meta["checksum"] == stored["checksum"]
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()

    assert stratus.ok("datasets", "rm", "study/copy.bin").stdout.strip() == "deleted study/copy.bin"
    assert stratus.ok("datasets", "rm", "study/plate.bin", "--json").stdout == ""
    assert stratus.json("datasets", "ls") == []


def test_dataset_errors(stratus: Stratus, tmp_path: Path) -> None:
    missing = stratus("datasets", "get", "no/such.bin", str(tmp_path / "x.bin"))
    assert missing.exit_code == 3
    assert one_line(missing.stderr).startswith("stratus: 404 ")
    assert not (tmp_path / "x.bin").exists()
    assert stratus("datasets", "rm", "no/such.bin").exit_code == 3
    no_file = stratus("datasets", "put", str(tmp_path / "absent.bin"), "a.bin")
    assert no_file.exit_code == 2
    (tmp_path / "a.bin").write_bytes(b"a")
    bad_name = stratus("datasets", "put", str(tmp_path / "a.bin"), "../a.bin")
    assert bad_name.exit_code == 3
    assert stratus.json("datasets", "ls") == []


def test_migrate(stratus: Stratus, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 5000)
    stratus.ok("datasets", "put", str(tmp_path / "a.bin"), "m/a.bin")
    stratus.ok("datasets", "put", str(tmp_path / "a.bin"), "m/b.bin")
    copied = stratus.ok("migrate", "m/a.bin", "archive", "--wait")
    assert copied.stdout.startswith("SUCCEEDED ")
    assert "copy m/a.bin local -> archive" in copied.stdout
    meta = stratus.json("datasets", "ls", "--prefix", "m/a")
    assert sorted(meta[0]["tiers"]) == ["archive", "local"]
    moved = stratus.json("migrate", "m/b.bin", "archive", "--move", "--wait")
    assert (moved["state"], moved["mode"], moved["bytes_done"]) == ("SUCCEEDED", "move", 5000)
    assert stratus.json("datasets", "ls", "--prefix", "m/b")[0]["tiers"] == ["archive"]
    stratus.ok("datasets", "put", str(tmp_path / "a.bin"), "m/c.bin")
    started = stratus.json("migrate", "m/c.bin", "archive")  # no --wait: as the API answered
    assert started["state"] in {"PENDING", "RUNNING", "SUCCEEDED"}
    there = stratus("migrate", "m/a.bin", "archive", "--wait")
    assert there.exit_code == 3
    assert one_line(there.stderr).startswith("stratus: 409 ")
    unknown = stratus("migrate", "m/none.bin", "archive", "--wait")
    assert unknown.exit_code == 3
    assert one_line(unknown.stderr).startswith("stratus: ")


def test_migrate_wait_exits_1_on_a_failed_migration(
    stratus: Stratus, cli_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The bytes on the tier changed behind the catalogue's back: the copy's checksum does
    not match, the migration ends FAILED, and ``migrate --wait`` exits 1 with the reason."""
    (tmp_path / "a.bin").write_bytes(b"a" * 5000)
    stratus.ok("datasets", "put", str(tmp_path / "a.bin"), "bad/a.bin")
    with Client(stratus.url, stratus.key) as client:
        tenant = client.tenant().id
    stored = Path(cli_cluster.cfg.env["STRATUS_STORAGE__LOCAL__ROOT"]) / tenant / "bad/a.bin"
    stored.write_bytes(b"b" * 5000)  # same size, other bytes
    failed = stratus("migrate", "bad/a.bin", "archive", "--wait")
    assert failed.exit_code == 1, (failed.stdout, failed.stderr)
    assert failed.stdout.startswith("FAILED ")
    assert "verification failed" in failed.stdout
    as_json = stratus("migrate", "bad/a.bin", "archive", "--wait", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["state"] == "FAILED"
    assert stratus.json("datasets", "ls", "--prefix", "bad/")[0]["tiers"] == ["local"]
