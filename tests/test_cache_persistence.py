"""Response-cache snapshots: a round trip through a restart, periodic snapshots, and snapshots
that are corrupt or from another setup being detected, reported and skipped whole."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from switchpoint.cache.config import CacheConfig, SemanticConfig
from switchpoint.cache.embedders import LocalSentenceEncoder
from switchpoint.cache.records import CacheControls
from switchpoint.cache.store import ResponseCache
from tests.support.cache_support import CHEAP, FakeClock, answer, ask, cache_config

PYTHON_Q = "How do I reverse a list in Python?"
PYTHON_PARAPHRASE = "How can I reverse a Python list?"
EXACT_ONLY = CacheControls(no_semantic=True)


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalSentenceEncoder]:
    encoder = LocalSentenceEncoder()
    yield encoder
    encoder.close()


def persistent_config(directory: Path, **overrides: object) -> CacheConfig:
    return cache_config(directory=str(directory), **overrides)


async def filled_snapshot(
    directory: Path, embedder: LocalSentenceEncoder, clock: FakeClock, **overrides: object
) -> Path:
    cache = ResponseCache(persistent_config(directory, **overrides), embedder, clock=clock)
    await cache.start()
    await cache.store(ask(PYTHON_Q, tenant="a"), answer("reversed()"))
    await cache.store(ask("exact only", tenant="a", controls=EXACT_ONLY), answer("e"))
    await cache.store(ask(PYTHON_Q, tenant="b", model=CHEAP), answer("b's", model=CHEAP))
    await cache.close()
    (snapshot,) = snapshots(directory)
    return snapshot


def snapshots(directory: Path) -> list[Path]:
    return sorted(directory.glob("snapshot-*"))


async def test_round_trip_through_a_restart(tmp_path: Path, embedder: LocalSentenceEncoder) -> None:
    clock = FakeClock()
    await filled_snapshot(tmp_path, embedder, clock, ttl_s=100)
    clock.advance(30)

    restarted = ResponseCache(persistent_config(tmp_path, ttl_s=100), embedder, clock=clock)
    await restarted.start()
    try:
        hit = await restarted.lookup(ask(PYTHON_PARAPHRASE, tenant="a"))
        assert hit is not None
        assert (hit.content, hit.kind, hit.age_s) == ("reversed()", "semantic", 30.0)
        assert await restarted.lookup(ask("exact only", tenant="a", controls=EXACT_ONLY))
        hit_b = await restarted.lookup(ask(PYTHON_Q, tenant="b", model=CHEAP))
        assert hit_b is not None
        assert hit_b.content == "b's"
        stats = restarted.stats()
        assert (stats.entries, stats.vectors, stats.partitions) == (3, 2, 2)
        assert stats.last_snapshot_error is None

        # Expiry times survive the restart, and new entries do not reuse ids.
        await restarted.store(ask("new question", tenant="a"), answer("new"))
        clock.advance(71)
        assert await restarted.lookup(ask(PYTHON_Q, tenant="a")) is None
        assert await restarted.lookup(ask("new question", tenant="a")) is not None
    finally:
        await restarted.close()


async def test_hnsw_partitions_survive_a_restart(
    tmp_path: Path, embedder: LocalSentenceEncoder
) -> None:
    config = persistent_config(
        tmp_path, hnsw_above=8, semantic=SemanticConfig(guard=False, threshold=0.8)
    )
    questions = [f"What is the boiling point of liquid number {n} at sea level?" for n in range(12)]
    cache = ResponseCache(config, embedder)
    await cache.start()
    for number, question in enumerate(questions):
        await cache.store(ask(question), answer(f"answer {number}"))
    await cache.store(ask(PYTHON_Q), answer("reversed()"))
    await cache.wait_for_rebuilds()
    assert cache.stats().hnsw_partitions == 1
    await cache.close()

    restarted = ResponseCache(config, embedder)
    await restarted.start()
    try:
        assert restarted.stats().hnsw_partitions == 1
        hit = await restarted.lookup(ask(PYTHON_PARAPHRASE))
        assert hit is not None
        assert hit.content == "reversed()"
    finally:
        await restarted.close()


async def test_periodic_snapshots_bound_what_a_crash_loses(
    tmp_path: Path, embedder: LocalSentenceEncoder
) -> None:
    config = persistent_config(tmp_path, snapshot_interval_s=0.05)
    cache = ResponseCache(config, embedder)
    await cache.start()
    try:
        await cache.store(ask(PYTHON_Q), answer("reversed()"))
        for _ in range(200):
            if snapshots(tmp_path):
                break
            await asyncio.sleep(0.02)
        # Simulated crash: no close(), a new process loads what the periodic snapshot wrote.
        survivor = ResponseCache(config, embedder)
        assert await survivor.load_snapshot() == 1
        assert await survivor.lookup(ask(PYTHON_Q)) is not None
        assert cache.stats().last_snapshot_at is not None
    finally:
        await cache.close()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def tamper_manifest(path: Path) -> None:
    manifest = json.loads(path.read_bytes())
    manifest["entries"]["count"] += 1
    path.write_text(json.dumps(manifest))


@dataclass(frozen=True)
class Damage:
    file_glob: str
    damage: Callable[[Path], object]
    reported: str


@pytest.mark.parametrize(
    "case",
    [
        Damage("index-*.faiss", flip_a_byte, "does not match the manifest"),
        Damage("index-*.faiss", truncate, "does not match the manifest"),
        Damage("entries.jsonl", flip_a_byte, "does not match the manifest"),
        Damage("entries.jsonl", truncate, "does not match the manifest"),
        Damage("manifest.json", truncate, "manifest.json: unreadable"),
        Damage("manifest.json", tamper_manifest, "manifest.json: checksum mismatch"),
        Damage("index-*.faiss", Path.unlink, "No such file"),
    ],
    ids=lambda case: f"{case.file_glob}-{case.damage.__name__}",
)
async def test_a_corrupt_snapshot_is_reported_and_skipped(
    tmp_path: Path, embedder: LocalSentenceEncoder, case: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = await filled_snapshot(tmp_path, embedder, FakeClock())
    case.damage(next(snapshot.glob(case.file_glob)))

    cache = ResponseCache(persistent_config(tmp_path), embedder, clock=FakeClock())
    await cache.start()
    try:
        stats = cache.stats()
        assert stats.entries == 0
        assert stats.last_snapshot_error is not None
        assert case.reported in stats.last_snapshot_error
        assert case.reported in caplog.text
        assert await cache.lookup(ask(PYTHON_Q, tenant="a")) is None
        # Moved aside, so it is neither loaded again nor overwritten before someone looks.
        assert not snapshot.exists()
        assert (tmp_path / f"corrupt-{snapshot.name}").is_dir()

        await cache.store(ask(PYTHON_Q, tenant="a"), answer("fresh"))
    finally:
        await cache.close()
    reloaded = ResponseCache(persistent_config(tmp_path), embedder, clock=FakeClock())
    assert await reloaded.load_snapshot() == 1


async def test_a_snapshot_from_another_setup_is_skipped(
    tmp_path: Path, embedder: LocalSentenceEncoder
) -> None:
    await filled_snapshot(tmp_path, embedder, FakeClock())

    other = ResponseCache(
        persistent_config(tmp_path, model_class_scope="model"), embedder, clock=FakeClock()
    )
    assert await other.load_snapshot() == 0
    error = other.stats().last_snapshot_error
    assert error is not None
    assert "written for" in error


async def test_an_interrupted_write_leaves_the_previous_snapshot(
    tmp_path: Path, embedder: LocalSentenceEncoder
) -> None:
    snapshot = await filled_snapshot(tmp_path, embedder, FakeClock())
    half_written = tmp_path / ".tmp-interrupted"
    half_written.mkdir()
    (half_written / "entries.jsonl").write_text("{")

    cache = ResponseCache(persistent_config(tmp_path), embedder, clock=FakeClock())
    await cache.start()
    try:
        assert cache.stats().entries == 3
        await cache.snapshot()
        assert not half_written.exists()
        assert not snapshot.exists()
        assert len(snapshots(tmp_path)) == 1
    finally:
        await cache.close()


def rewrite_manifest(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Change a manifest and seal it again, as a crafted snapshot would."""
    manifest = json.loads(path.read_bytes())
    del manifest["checksum"]
    change(manifest)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    manifest["checksum"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["../x", "absolute", "listed-but-unexpected"])
async def test_a_manifest_naming_a_file_elsewhere_is_refused_not_read(
    tmp_path: Path, embedder: LocalSentenceEncoder, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition whose file name leads out of the snapshot (or is no name the writer uses) makes
    the snapshot corrupt: the file it names, a valid index that would load, is never read."""
    snapshot = await filled_snapshot(tmp_path, embedder, FakeClock())
    manifest_path = snapshot / "manifest.json"
    partition = json.loads(manifest_path.read_bytes())["partitions"][0]
    original = snapshot / partition["file"]
    if where == "../x":
        name, target = "../x", tmp_path / "x"
    elif where == "absolute":
        target = tmp_path / "elsewhere" / "index.faiss"
        target.parent.mkdir()
        name = str(target)
    else:
        name, target = "partition.bin", snapshot / "partition.bin"
    shutil.move(original, target)

    def point_elsewhere(manifest: dict[str, Any]) -> None:
        digest = manifest["files"].pop(partition["file"])
        manifest["partitions"][0]["file"] = name
        if where == "listed-but-unexpected":
            manifest["files"][name] = digest  # the right digest: only the name is wrong

    rewrite_manifest(manifest_path, point_elsewhere)

    cache = ResponseCache(persistent_config(tmp_path), embedder, clock=FakeClock())
    await cache.start()
    try:
        stats = cache.stats()
        assert stats.entries == 0
        reported = f"manifest names an invalid file {name!r}"
        assert stats.last_snapshot_error is not None
        assert reported in stats.last_snapshot_error
        assert reported in caplog.text
        assert await cache.lookup(ask(PYTHON_Q, tenant="a")) is None
        assert not snapshot.exists()
        assert (tmp_path / f"corrupt-{snapshot.name}").is_dir()
    finally:
        await cache.close()
