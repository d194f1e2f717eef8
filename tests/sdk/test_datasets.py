"""Datasets and migrations through the SDK, sync and async: bytes, files and NumPy arrays
up and down, listed, described, deleted, moved between tiers, and used by a job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stratus_client import ApiError, AsyncClient, Client, JobState


async def test_bytes_meta_list_delete(client: Client, aclient: AsyncClient) -> None:
    data = bytes(range(256)) * 1000
    stored = client.datasets.put_bytes("raw/a.bin", data)
    assert (stored.name, stored.size, stored.tier) == ("raw/a.bin", len(data), "local")
    assert client.datasets.get_bytes("raw/a.bin") == data
    assert client.datasets.meta("raw/a.bin").checksum == stored.checksum
    astored = await aclient.datasets.put_bytes("raw/b.bin", data[:10])
    assert astored.size == 10
    assert await aclient.datasets.get_bytes("raw/b.bin") == data[:10]
    assert (await aclient.datasets.meta("raw/a.bin")).size == len(data)
    assert sorted(d.name for d in client.datasets.list(prefix="raw/")) == [
        "raw/a.bin",
        "raw/b.bin",
    ]
    assert sorted([d.name async for d in aclient.datasets.list()]) == ["raw/a.bin", "raw/b.bin"]
    client.datasets.delete("raw/a.bin")
    await aclient.datasets.delete("raw/b.bin")
    assert list(client.datasets.list()) == []
    with pytest.raises(ApiError) as info:
        client.datasets.get_bytes("raw/a.bin")
    assert info.value.status == 404
    with pytest.raises(ApiError) as ainfo:
        await aclient.datasets.meta("raw/b.bin")
    assert ainfo.value.status == 404


async def test_files_up_and_down(client: Client, aclient: AsyncClient, tmp_path: Path) -> None:
    """A file larger than one chunk goes up and comes down byte for byte; a failed download
    leaves no file behind."""
    source = tmp_path / "in.bin"
    source.write_bytes(np.random.default_rng(1).bytes(3 * 2**20 + 17))
    assert client.datasets.put_file("f/one.bin", source).size == source.stat().st_size
    assert (await aclient.datasets.put_file("f/two.bin", source)).size == source.stat().st_size
    out = client.datasets.get_file("f/two.bin", tmp_path / "one.out")
    assert out.read_bytes() == source.read_bytes()
    aout = await aclient.datasets.get_file("f/one.bin", tmp_path / "two.out")
    assert aout.read_bytes() == source.read_bytes()
    with pytest.raises(ApiError):
        client.datasets.get_file("f/none.bin", tmp_path / "none.out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "one.out", "two.out"]


async def test_arrays_and_a_job_on_them(client: Client, aclient: AsyncClient) -> None:
    """Arrays up as .npy, a saxpy job on them, its output down as an array."""
    rng = np.random.default_rng(7)
    x, y = rng.random(200_000), rng.random(200_000)
    client.datasets.put_array("v/x.npy", x)
    await aclient.datasets.put_array("v/y.npy", y)
    assert client.datasets.get_array("v/x.npy").tobytes() == x.tobytes()
    fortran = np.asfortranarray(rng.random((30, 40)))
    await aclient.datasets.put_array("v/m.npy", fortran)
    assert np.array_equal(await aclient.datasets.get_array("v/m.npy"), fortran)
    job = client.submit(
        "saxpy",
        params={"a": 2.0},
        inputs={"x": "v/x.npy", "y": "v/y.npy"},
        outputs={"y": "v/out.npy"},
    )
    assert client.wait(job.id, timeout=60).state == JobState.SUCCEEDED
    np.testing.assert_allclose(await aclient.datasets.get_array("v/out.npy"), 2.0 * x + y)


async def test_object_arrays_are_refused_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match="pickles"):
        client.datasets.put_array("v/o.npy", np.array([{"a": 1}], dtype=object))
    assert list(client.datasets.list()) == []


async def test_migrations(client: Client, aclient: AsyncClient) -> None:
    client.datasets.put_bytes("m/a.bin", b"a" * 1000)
    client.datasets.put_bytes("m/b.bin", b"b" * 1000)
    copy = client.migrate("m/a.bin", "archive")
    assert (copy.from_tier, copy.to_tier, copy.mode) == ("local", "archive", "copy")
    done = client.wait_migration(copy.id, timeout=60)
    assert done.state == "SUCCEEDED"
    assert done.bytes_done == 1000
    assert "archive" in client.datasets.meta("m/a.bin").tiers
    move = await aclient.migrate("m/b.bin", "archive", "move")
    adone = await aclient.wait_migration(move.id, timeout=60)
    assert adone.state == "SUCCEEDED"
    assert (await aclient.datasets.meta("m/b.bin")).tiers == ["archive"]
    assert client.get_migration(copy.id).id == copy.id
    assert sorted(m.id for m in client.migrations()) == sorted([copy.id, move.id])
    assert [m.id async for m in aclient.migrations(dataset="m/b.bin")] == [move.id]
    assert client.datasets.get_bytes("m/b.bin") == b"b" * 1000
    with pytest.raises(ApiError) as info:
        client.migrate("m/none.bin", "archive")
    assert info.value.status in {404, 422}
