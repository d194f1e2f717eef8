"""Benchmark of the datamover, each figure beside a reference measured in the same run.

    .venv/bin/python bench/datamover.py [--quick] [--repeat K] [--big-mib N] [--s3-mib N]

1. ``local`` → ``archive``: a migration of a ``--big-mib`` (1 GiB) file, checksum verified by
   reading the copy back, against ``cp --reflink=never`` of the same file (warm page cache,
   no fsync on either side). Target: at least 0.8x cp.
2. ``local`` → ``s3`` and ``s3`` → ``local`` of a ``--s3-mib`` (256 MiB) file on moto_server,
   against boto3's ``upload_file`` / ``download_file`` with the same part size and
   concurrency. moto is CPU-bound and slow on ranged reads: only the ratio means anything.
   Target: at least 0.9x boto3 both ways.
3. Resume cost: a real datamover process copying ``--big-mib`` to ``archive`` (paced so that
   50% can be caught) is killed with SIGKILL at 50%, started again, and finishes; printed are
   the bytes written before the kill (allocated in the sparse partial file), the bytes copied
   after the restart, and so the bytes copied twice.

Times are wall clock from the request's commit to SUCCEEDED, as a user sees them; the
datamover runs in-process on uvloop, as the service does under uvicorn, and the bench learns
that a migration ended from the datamover's own task (no polling beside it). The reference and
ours alternate round by round after one warm-up round each, each going first every other
round (what the one before leaves, dirty pages and moto's cleanup, slows the next), and the
figures are medians:
the machine is shared, so only ratios from one run mean anything. Everything it starts uses
database and vhost ``stratus_bench_dm`` and ``bench/results/datamover-run/``, removed on exit.
Results: ``bench/results/datamover.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from boto3.s3.transfer import TransferConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from services.datamover.app import Mover, create_app
from services.datamover.settings import DatamoverSettings
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Migration, Tenant
from shared.settings import StorageSettings
from shared.storage.catalog import record_published
from shared.storage.checksum import format_checksum, new_hasher
from shared.storage.migrations import MigrationMode, request_migration
from tests.datamover.harness import MotoServer, free_port
from tools.cluster import drop_database, drop_vhost, prepare_database, prepare_vhost

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUN = RESULTS / "datamover-run"
NAME = "stratus_bench_dm"
MiB = 2**20
CHUNK = 8 * MiB
IN_FLIGHT = 4
BUCKET = "stratus-bench"


def say(line: str = "") -> None:
    print(line, flush=True)


def make_file(path: Path, size: int) -> str:
    """Incompressible bytes (a random block, varied per block); returns the checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(CHUNK)
    hasher = new_hasher()
    with path.open("wb") as f:
        for i in range(0, size, CHUNK):
            block = (i // CHUNK).to_bytes(8, "little") + seed[8 : min(CHUNK, size - i)]
            block = block[: min(CHUNK, size - i)]
            hasher.update(block)
            f.write(block)
    return format_checksum(hasher)


def storage(moto: MotoServer) -> StorageSettings:
    return StorageSettings.model_validate(
        {
            "local": {"root": str(RUN / "local")},
            "archive": {"root": str(RUN / "archive")},
            "s3": {
                "kind": "s3",
                "endpoint_url": moto.url,
                "bucket": BUCKET,
                "region": "us-east-1",
                "access_key_id": "bench",
                "secret_access_key": "bench",
            },
            "chunk_bytes": CHUNK,
            "fsync": False,  # cp and boto3 do not fsync either
        }
    )


class Bench:
    def __init__(self, settings: DatamoverSettings, moto: MotoServer) -> None:
        self.settings = settings
        self.moto = moto
        self.engine = make_engine(settings.postgres, application_name="bench-datamover")
        self.sessions = make_sessionmaker(self.engine)
        self.tenant = uuid.uuid4()
        self.wake: Callable[[], None] | None = None
        self.mover: Mover | None = None  # the in-process datamover: wait on its task

    def path(self, tier: str, name: str) -> Path:
        return Path(self.settings.storage.tiers()[tier].root) / str(self.tenant) / name

    async def setup(self) -> None:
        async with self.sessions() as s, s.begin():
            s.add(Tenant(id=self.tenant, name=f"bench-{self.tenant.hex[:8]}", quotas={}))

    async def register(self, name: str, size: int, checksum: str, tier: str = "local") -> None:
        async with self.sessions() as s, s.begin():
            await record_published(
                session=s, tenant_id=self.tenant, name=name, size=size, checksum=checksum, tier=tier
            )

    async def migrate(
        self, name: str, to_tier: str, mode: MigrationMode
    ) -> tuple[float, Migration]:
        t0 = time.perf_counter()
        async with self.sessions() as s, s.begin():
            req = await request_migration(
                session=s,
                tenant_id=self.tenant,
                dataset=name,
                to_tier=to_tier,
                mode=mode,
                tiers=self.settings.storage.tiers().keys(),
            )
        if self.wake is not None:
            self.wake()  # as the migration.requested event does (the outbox relay is not woken)
        return await self.wait(req.migration.id, t0)

    async def wait(
        self, mid: uuid.UUID, t0: float, timeout: float = 600
    ) -> tuple[float, Migration]:
        """Until the migration is final. With the datamover in-process, its task says when
        (the database is read every 0.25 s besides); else poll the database every 5 ms."""
        checked = 0.0
        while (now := time.perf_counter()) - t0 < timeout:
            task = self.mover.active.get(mid) if self.mover is not None else None
            if task is not None:
                await asyncio.wait([task])
            elif self.mover is not None and now - checked < 0.25:
                await asyncio.sleep(0.001)
                continue
            elapsed, checked = time.perf_counter() - t0, time.perf_counter()
            m = await self.get(mid)
            if m.state in ("SUCCEEDED", "FAILED"):
                if m.state == "FAILED":
                    raise RuntimeError(f"migration failed: {m.error}")
                return elapsed, m
            if self.mover is None:
                await asyncio.sleep(0.005)
        raise TimeoutError("migration did not finish")

    async def get(self, mid: uuid.UUID) -> Migration:
        async with self.sessions() as s:
            m = await s.get(Migration, mid)
        assert m is not None
        return m


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values)


async def take_turns(
    round_: int, reference: Callable[[], None], ours: Callable[[], Awaitable[None]]
) -> None:
    """Run both sides of a round, each going first every other round: what the first leaves
    behind (dirty pages being written back, moto freeing a deleted object) slows the second."""
    if round_ % 2:
        await ours()
        reference()
    else:
        reference()
        await ours()


async def local_to_archive(b: Bench, size: int, repeat: int) -> dict[str, Any]:
    src = b.path("local", "big/src.bin")
    checksum = await asyncio.to_thread(make_file, src, size)
    cps, moves, servers = [], [], []
    for i in range(-1, repeat):  # round -1 warms up both sides and is not counted
        dst = b.path("archive", f"cp/{i}.bin")
        dst.parent.mkdir(parents=True, exist_ok=True)

        def reference(d: Path = dst) -> None:
            cps.append(
                timed(
                    lambda: subprocess.run(["cp", "--reflink=never", str(src), str(d)], check=True)
                )
            )
            d.unlink()

        async def ours(i: int = i) -> None:
            name = f"big/m{i}.bin"
            os.link(src, b.path("local", name))  # the same inode: the same warm pages
            await b.register(name, size, checksum)
            wall, m = await b.migrate(name, "archive", MigrationMode.COPY)
            assert m.checksum == checksum
            moves.append(wall)
            servers.append(server_time(m))
            b.path("archive", name).unlink()

        await take_turns(i, reference, ours)
    cps, moves, servers = cps[1:], moves[1:], servers[1:]
    cp, mv = median(cps), median(moves)
    return {
        "bytes": size,
        "rounds": repeat,
        "cp_s": cp,
        "migration_s": mv,
        "migration_started_to_finished_s": median(servers),
        "ratio": cp / mv,
        "ratio_per_round": [c / m for c, m in zip(cps, moves, strict=True)],
        "target": 0.8,
    }


def server_time(m: Migration) -> float:
    """The datamover's own time: claimed (started_at) to SUCCEEDED (finished_at)."""
    assert m.started_at is not None
    assert m.finished_at is not None
    return (m.finished_at - m.started_at).total_seconds()


async def s3_both_ways(b: Bench, size: int, repeat: int) -> dict[str, Any]:
    src = b.path("local", "s3/src.bin")
    checksum = await asyncio.to_thread(make_file, src, size)
    client = b.moto.client()
    config = TransferConfig(
        multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=IN_FLIGHT
    )
    ups, downs, ours_up, ours_down = [], [], [], []
    for i in range(-1, repeat):  # round -1 warms up both sides and is not counted

        def reference(key: str = f"ref/{i}.bin", out: Path = RUN / f"ref-{i}.bin") -> None:
            ups.append(timed(lambda: client.upload_file(str(src), BUCKET, key, Config=config)))
            downs.append(timed(lambda: client.download_file(BUCKET, key, str(out), Config=config)))
            out.unlink()
            client.delete_object(Bucket=BUCKET, Key=key)

        async def ours(name: str = f"s3/m{i}.bin") -> None:
            os.link(src, b.path("local", name))
            await b.register(name, size, checksum)
            wall, _ = await b.migrate(name, "s3", MigrationMode.MOVE)
            ours_up.append(wall)
            wall, m = await b.migrate(name, "local", MigrationMode.MOVE)
            assert m.checksum == checksum
            ours_down.append(wall)

        await take_turns(i, reference, ours)
    ups, downs, ours_up, ours_down = ups[1:], downs[1:], ours_up[1:], ours_down[1:]
    up, down = median(ups), median(downs)
    return {
        "bytes": size,
        "rounds": repeat,
        "boto3_upload_s": up,
        "migration_up_s": median(ours_up),
        "ratio_up": up / median(ours_up),
        "ratio_up_per_round": [r / o for r, o in zip(ups, ours_up, strict=True)],
        "boto3_download_s": down,
        "migration_down_s": median(ours_down),
        "ratio_down": down / median(ours_down),
        "ratio_down_per_round": [r / o for r, o in zip(downs, ours_down, strict=True)],
        "target": 0.9,
    }


def allocated(path: Path) -> int:
    """Bytes of a sparse file that were written (SEEK_DATA / SEEK_HOLE)."""
    total, fd = 0, os.open(path, os.O_RDONLY)
    try:
        end, pos = os.fstat(fd).st_size, 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            total += pos - start
    finally:
        os.close(fd)
    return total


async def resume_cost(b: Bench, size: int, env: dict[str, str]) -> dict[str, Any]:
    src = b.path("local", "resume/src.bin")
    checksum = await asyncio.to_thread(make_file, src, size)
    await b.register("resume/src.bin", size, checksum)
    env = {**env, "STRATUS_THROTTLE_BYTES_PER_S": str(256 * MiB), "STRATUS_NAME": "bench-dm"}
    log = (RUN / "datamover.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.datamover"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    t0 = time.perf_counter()
    async with b.sessions() as s, s.begin():
        req = await request_migration(
            session=s,
            tenant_id=b.tenant,
            dataset="resume/src.bin",
            to_tier="archive",
            mode=MigrationMode.COPY,
            tiers=b.settings.storage.tiers().keys(),
        )
    mid = req.migration.id
    while (await b.get(mid)).bytes_done < size // 2:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = await b.get(mid)
    temp = Path(killed.upload["temp"]) if killed.upload else None
    written = allocated(temp) if temp is not None and temp.exists() else killed.bytes_done
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.datamover"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        _, done = await b.wait(mid, t0)
    finally:
        proc.terminate()
        proc.wait()
    after = done.bytes_copied - killed.bytes_copied
    assert done.checksum == checksum
    return {
        "bytes": size,
        "bytes_done_at_kill": killed.bytes_done,
        "bytes_written_before_kill": written,
        "bytes_copied_after_restart": after,
        "bytes_copied_twice": written + after - size,
    }


def report(results: dict[str, Any]) -> None:
    la, s3, rc = results["local_archive"], results["s3"], results["resume"]
    start, end = results["load_average"]
    say(f"medians of {la['rounds']} rounds; load average {start:.1f} at the start, {end:.1f} after")
    say(
        f"local -> archive {la['bytes'] / MiB:.0f} MiB: migration {la['migration_s']:.2f} s "
        f"(claimed to done {la['migration_started_to_finished_s']:.2f} s), "
        f"cp {la['cp_s']:.2f} s: {la['ratio']:.2f}x cp (target >= 0.8)"
    )
    say(
        f"local -> s3 {s3['bytes'] / MiB:.0f} MiB: migration {s3['migration_up_s']:.2f} s, boto3 "
        f"upload_file {s3['boto3_upload_s']:.2f} s: {s3['ratio_up']:.2f}x (target >= 0.9)"
    )
    say(
        f"s3 -> local: migration {s3['migration_down_s']:.2f} s, boto3 download_file "
        f"{s3['boto3_download_s']:.2f} s: {s3['ratio_down']:.2f}x (target >= 0.9)"
    )
    say(
        f"resume after SIGKILL at {rc['bytes_done_at_kill'] / rc['bytes']:.0%}: "
        f"{rc['bytes_written_before_kill'] / MiB:.0f} MiB written before, "
        f"{rc['bytes_copied_after_restart'] / MiB:.0f} MiB after, "
        f"{rc['bytes_copied_twice'] / MiB:.0f} MiB copied twice "
        f"({rc['bytes_copied_twice'] / rc['bytes']:.1%} of the file)"
    )


async def run(
    opts: argparse.Namespace, settings: DatamoverSettings, moto: MotoServer, env: dict[str, str]
) -> dict[str, Any]:
    b = Bench(settings, moto)
    await b.setup()
    app = create_app(settings)
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        while getattr(app.state, "starting", False) or not hasattr(app.state, "mover"):
            await asyncio.sleep(0.05)  # a start waiting for the broker goes on in the background
        b.wake = app.state.mover.wake.set
        b.mover = app.state.mover
        results["local_archive"] = await local_to_archive(b, opts.big_mib * MiB, opts.repeat)
        results["s3"] = await s3_both_ways(b, opts.s3_mib * MiB, opts.repeat)
    b.mover = None  # a datamover subprocess from here on
    results["resume"] = await resume_cost(b, opts.big_mib * MiB, env)
    await b.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 64 MiB, 3 rounds")
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (medians)")
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--s3-mib", type=int, default=256)
    opts = parser.parse_args()
    if opts.quick:
        opts.big_mib, opts.s3_mib, opts.repeat = 256, 64, 3
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        {
            "STRATUS_POSTGRES__DATABASE": NAME,
            "STRATUS_RABBIT__VHOST": NAME,
            "STRATUS_LOG_LEVEL": "WARNING",
        }
    )
    prepare_database(NAME)
    prepare_vhost(NAME)
    moto = MotoServer(free_port())
    moto.start()
    try:
        moto.client().create_bucket(Bucket=BUCKET)
        tiers = storage(moto)
        os.environ.update(env)
        settings = DatamoverSettings(
            storage=tiers,
            in_flight=IN_FLIGHT,
            name="bench-dm-inproc",  # the rest as the service's defaults
        )
        sub_env = {
            **env,
            "STRATUS_PORT": str(free_port()),
            "STRATUS_STORAGE__LOCAL__ROOT": tiers.local.root,
            "STRATUS_STORAGE__ARCHIVE__ROOT": tiers.archive.root,
            "STRATUS_STORAGE__FSYNC": "false",
            "STRATUS_STORAGE__CHUNK_BYTES": str(CHUNK),
            "STRATUS_IN_FLIGHT": str(IN_FLIGHT),
        }
        load = os.getloadavg()[0]
        results = uvloop.run(run(opts, settings, moto, sub_env))
        results["chunk_bytes"], results["in_flight"], results["fsync"] = CHUNK, IN_FLIGHT, False
        results["load_average"] = [load, os.getloadavg()[0]]
        say()
        report(results)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "datamover.json").write_text(json.dumps(results, indent=2))
    finally:
        moto.stop()
        drop_database(NAME)
        drop_vhost(NAME)
        shutil.rmtree(RUN, ignore_errors=True)


if __name__ == "__main__":
    main()
