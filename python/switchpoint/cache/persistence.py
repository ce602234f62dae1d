"""Snapshots of the response cache on disk, so its entries and vectors survive a restart.

Layout under the configured directory:

    snapshot-000042/            the newest complete snapshot (older ones are removed after it)
      manifest.json             format version, identity, partitions, sha256 + size of every file,
                                and a checksum over the manifest itself
      entries.jsonl             one entry per line, least recently used first
      index-0000.faiss          one FAISS index per partition (faiss.serialize_index)
    .tmp-<random>/              a snapshot being written; renamed into place only when complete

A snapshot is written into a temporary directory, fsynced, and renamed into place, so a crash
mid-write leaves the previous snapshot intact. Loading verifies every file against the manifest and
parses everything before returning anything: a corrupt or incompatible snapshot raises
`SnapshotError` and nothing of it is used (the cache starts empty and reports why).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from switchpoint.cache.index import PartitionBlob, index_ids, kind_of
from switchpoint.cache.records import CachedAnswer, CacheEntry, CacheScope

FORMAT = "switchpoint-cache-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENTRIES = "entries.jsonl"
_SNAPSHOT_DIR = re.compile(r"^snapshot-(\d+)$")
# The only names a snapshot's files may have (as `write` names them): anything else in a manifest,
# a path above all, is a corrupt or crafted snapshot.
_FILE_NAME = re.compile(r"(?:entries\.jsonl|index-\d{4,}\.faiss)\Z")
_CHUNK = 1 << 20


class SnapshotError(Exception):
    """A snapshot that cannot be used: corrupt, truncated, or written by an incompatible setup."""


@dataclass(frozen=True, slots=True)
class SnapshotIdentity:
    """What must match between the writer and the reader for the snapshot to mean anything:
    vectors of another embedder, or keys derived another way, would silently never match."""

    embedder: str
    dim: int
    key_version: int
    model_class_scope: str
    quality_bands: int


@dataclass(frozen=True, slots=True)
class LoadedSnapshot:
    path: Path
    created_at: float
    next_entry_id: int
    entries: list[CacheEntry]
    indexes: dict[CacheScope, Any]


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entry_to_json(entry: CacheEntry) -> dict[str, object]:
    return {
        "id": entry.entry_id,
        "tenant": entry.scope.tenant,
        "class": entry.scope.model_class,
        "params": entry.scope.params_key,
        "rank": entry.class_rank,
        "exact": entry.exact_key,
        "text": entry.semantic_text,
        "answer": asdict(entry.answer),
        "created": entry.created_at,
        "expires": entry.expires_at,
    }


def entry_from_json(raw: dict[str, Any]) -> CacheEntry:
    answer = raw["answer"]
    return CacheEntry(
        entry_id=int(raw["id"]),
        scope=CacheScope(str(raw["tenant"]), str(raw["class"]), str(raw["params"])),
        class_rank=int(raw["rank"]),
        exact_key=str(raw["exact"]),
        semantic_text=None if raw["text"] is None else str(raw["text"]),
        answer=CachedAnswer(
            content=str(answer["content"]),
            model=str(answer["model"]),
            quality=float(answer["quality"]),
            finish_reason=str(answer["finish_reason"]),
            input_tokens=int(answer["input_tokens"]),
            output_tokens=int(answer["output_tokens"]),
            cost_usd=float(answer["cost_usd"]),
        ),
        created_at=float(raw["created"]),
        expires_at=float(raw["expires"]),
    )


class SnapshotStore:
    """Reads and writes snapshots in one directory. Blocking: call from a worker thread."""

    def __init__(self, directory: Path, identity: SnapshotIdentity) -> None:
        self.directory = directory
        self.identity = identity

    def _snapshots(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for child in self.directory.iterdir():
            match = _SNAPSHOT_DIR.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def write(
        self,
        entries: Sequence[CacheEntry],
        partitions: Sequence[PartitionBlob],
        *,
        created_at: float,
        next_entry_id: int,
    ) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.directory))
        try:
            files: dict[str, dict[str, object]] = {}
            lines = b"".join(_canonical(entry_to_json(e)) + b"\n" for e in entries)
            _write_synced(staging / ENTRIES, lines)
            files[ENTRIES] = {"sha256": hashlib.sha256(lines).hexdigest(), "bytes": len(lines)}
            described = []
            for number, blob in enumerate(partitions):
                name = f"index-{number:04d}.faiss"
                _write_synced(staging / name, blob.data)
                digest = hashlib.sha256(blob.data).hexdigest()
                files[name] = {"sha256": digest, "bytes": len(blob.data)}
                described.append(
                    {
                        "tenant": blob.scope.tenant,
                        "model_class": blob.scope.model_class,
                        "params_key": blob.scope.params_key,
                        "kind": blob.kind,
                        "file": name,
                    }
                )
            manifest: dict[str, object] = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "identity": asdict(self.identity),
                "created_at": created_at,
                "next_entry_id": next_entry_id,
                "entries": {"file": ENTRIES, "count": len(entries)},
                "partitions": described,
                "files": files,
            }
            manifest["checksum"] = hashlib.sha256(_canonical(manifest)).hexdigest()
            _write_synced(staging / MANIFEST, _canonical(manifest))
            _fsync_dir(staging)
            snapshots = self._snapshots()
            target = self.directory / f"snapshot-{(snapshots[-1][0] + 1 if snapshots else 1):06d}"
            staging.rename(target)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._remove_all_but(target)
        return target

    def _remove_all_but(self, keep: Path) -> None:
        for child in self.directory.iterdir():
            stale = _SNAPSHOT_DIR.match(child.name) or child.name.startswith(".tmp-")
            if stale and child != keep:
                shutil.rmtree(child, ignore_errors=True)

    def newest(self) -> Path | None:
        snapshots = self._snapshots()
        return snapshots[-1][1] if snapshots else None

    def load(self) -> LoadedSnapshot | None:
        """The newest snapshot, fully verified; None when there is none; SnapshotError when it
        cannot be used."""
        path = self.newest()
        if path is None:
            return None
        try:
            return self._load(path)
        except SnapshotError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise SnapshotError(f"{path.name}: unreadable: {exc}") from exc

    @staticmethod
    def _member(path: Path, name: object, listed: dict[str, Any]) -> Path:
        """The snapshot's file `name`, which must be one `write` could have made and one the
        manifest lists (so its digest is checked): never a path leading elsewhere."""
        if not isinstance(name, str) or not _FILE_NAME.match(name) or name not in listed:
            raise SnapshotError(f"{path.name}: manifest names an invalid file {name!r}")
        return path / name

    def _load(self, path: Path) -> LoadedSnapshot:
        manifest = self._manifest(path)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise SnapshotError(f"{path.name}/{MANIFEST}: files is not a JSON object")
        for name, expected in files.items():
            digest, size = _file_digest(self._member(path, name, files))
            if size != expected["bytes"] or digest != expected["sha256"]:
                raise SnapshotError(
                    f"{path.name}/{name}: content does not match the manifest "
                    f"({size} bytes, expected {expected['bytes']})"
                )
        entries = self._entries(path, manifest)
        indexes: dict[CacheScope, Any] = {}
        for part in manifest["partitions"]:
            scope = CacheScope(part["tenant"], part["model_class"], part["params_key"])
            data = self._member(path, part["file"], files).read_bytes()
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            if kind_of(index) != part["kind"] or int(index.d) != self.identity.dim:
                raise SnapshotError(f"{path.name}/{part['file']}: not a {part['kind']} index")
            indexes[scope] = index
        self._check_vectors(path, entries, indexes)
        return LoadedSnapshot(
            path=path,
            created_at=float(manifest["created_at"]),
            next_entry_id=int(manifest["next_entry_id"]),
            entries=entries,
            indexes=indexes,
        )

    def _manifest(self, path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((path / MANIFEST).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path.name}/{MANIFEST}: unreadable: {exc}") from exc
        if not isinstance(manifest, dict):
            raise SnapshotError(f"{path.name}/{MANIFEST}: not a JSON object")
        checksum = manifest.pop("checksum", None)
        if checksum != hashlib.sha256(_canonical(manifest)).hexdigest():
            raise SnapshotError(f"{path.name}/{MANIFEST}: checksum mismatch")
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise SnapshotError(
                f"{path.name}: format {manifest.get('format')!r} version "
                f"{manifest.get('version')!r}, this build reads {FORMAT!r} {FORMAT_VERSION}"
            )
        if manifest.get("identity") != asdict(self.identity):
            raise SnapshotError(
                f"{path.name}: written for {manifest.get('identity')}, "
                f"this cache is {asdict(self.identity)}"
            )
        return manifest

    def _entries(self, path: Path, manifest: dict[str, Any]) -> list[CacheEntry]:
        lines = self._member(path, ENTRIES, manifest["files"]).read_bytes().splitlines()
        if len(lines) != manifest["entries"]["count"]:
            raise SnapshotError(
                f"{path.name}/{ENTRIES}: {len(lines)} entries, the manifest says "
                f"{manifest['entries']['count']}"
            )
        entries = [entry_from_json(json.loads(line)) for line in lines]
        if len({e.entry_id for e in entries}) != len(entries):
            raise SnapshotError(f"{path.name}/{ENTRIES}: duplicate entry ids")
        return entries

    @staticmethod
    def _check_vectors(
        path: Path, entries: Sequence[CacheEntry], indexes: dict[CacheScope, Any]
    ) -> None:
        stored = {scope: set(index_ids(index).tolist()) for scope, index in indexes.items()}
        for entry in entries:
            if entry.semantic_text is None:
                continue
            if entry.entry_id not in stored.get(entry.scope, set()):
                raise SnapshotError(f"{path.name}: entry {entry.entry_id} has no vector")

    def discard(self, path: Path) -> Path:
        """Move an unusable snapshot aside (kept for inspection, never loaded again)."""
        target = path.with_name(f"corrupt-{path.name}")
        with contextlib.suppress(OSError):
            shutil.rmtree(target, ignore_errors=True)
            path.rename(target)
            return target
        return path
