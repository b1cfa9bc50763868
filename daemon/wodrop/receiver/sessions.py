"""Sessions the receiver knows: created, looked up (from memory, else from the store after a restart),
saved, finalised. Each :class:`Session` has a lock; handlers hold it while they change the session."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from wodrop.digest import Hashes
from wodrop.receiver.processing import verdict
from wodrop.receiver.report import build_report
from wodrop.receiver.store import Session, Store

BUCKET = "wodrop-receiver"
BATCH_ID = re.compile(r"^[0-9a-f]{32}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sessions:
    def __init__(self, store: Store, require_metadata_keys: Sequence[str] = ()) -> None:
        self.store = store
        #: keys every work order's metadata.json must hold (``--require-metadata-key``), else an error
        self.require_metadata_keys = tuple(require_metadata_keys)
        self._cache: dict[str, Session] = {}

    async def create(self, filename: str, total: int | None = None) -> Session:
        s = Session(uuid.uuid4().hex, filename, secrets.token_urlsafe(24), _now(), total=total)
        s.digest = Hashes()
        await asyncio.to_thread(self.store.save, s)
        self._cache[s.batch_id] = s
        return s

    async def get(self, bid: str) -> Session | None:
        if not BATCH_ID.fullmatch(bid):
            return None
        s = self._cache.get(bid)
        if s is None:
            loaded = await asyncio.to_thread(self.store.load, bid)
            if loaded is None:
                return None
            s = self._cache.setdefault(bid, loaded)
        return s

    async def all(self) -> list[Session]:
        ids = await asyncio.to_thread(self.store.batch_ids)
        found = [await self.get(bid) for bid in ids]
        return sorted((s for s in found if s is not None), key=lambda s: s.created_at)

    async def save(self, s: Session) -> None:
        await asyncio.to_thread(self.store.save, s)

    async def digest(self, s: Session) -> Hashes:
        """The hasher state for the saved bytes; recomputed from disk after a restart."""
        if s.digest is None:
            s.digest = await asyncio.to_thread(Hashes.of_file, self.store.part(s.batch_id), s.committed)
        return s.digest

    async def finalize(self, s: Session) -> dict[str, Any]:
        """Complete upload: ``.part`` -> ``.zip``, write the report, mark uploaded; idempotent, so a
        crash half-way is finished by the next request after a restart."""
        part, archive = self.store.part(s.batch_id), self.store.archive(s.batch_id)
        if s.digest is None:
            src = part if part.exists() else archive
            s.digest = await asyncio.to_thread(Hashes.of_file, src, s.committed)
        digest = s.digest
        meta = {
            "kind": "storage#object",
            "id": f"{BUCKET}/{s.filename}",
            "name": s.filename,
            "bucket": BUCKET,
            "size": str(s.committed),
            "md5Hash": digest.md5_b64,
            "crc32c": digest.crc32c_b64,
            "contentType": "application/zip",
            "timeCreated": _now(),
            "batch_id": s.batch_id,
            "status": "uploaded",
        }

        def finish() -> None:
            if part.exists():
                os.replace(part, archive)
            elif not archive.exists():
                archive.touch()  # a zero-byte upload never created a .part
            report = build_report(archive, s, digest, s.committed, self.require_metadata_keys)
            self.store.write_json(self.store.report(s.batch_id), report)
            s.status, s.object_meta = "uploaded", meta
            s.uploaded_at = s.uploaded_at or time.time()
            s.verdict = verdict(report)[0]
            self.store.save(s)

        await asyncio.to_thread(finish)
        return meta

    async def forget(self, s: Session) -> None:
        """Delete a batch that was never uploaded (API DELETE)."""
        await asyncio.to_thread(self.store.delete, s.batch_id)
        self._cache.pop(s.batch_id, None)

    async def end(self, s: Session, status: str) -> None:
        """Expire or cancel: the data is dropped, the sidecar stays to answer 404/410 later."""
        s.status = status
        await asyncio.to_thread(self.store.part(s.batch_id).unlink, missing_ok=True)
        s.committed, s.digest = 0, Hashes()
        await self.save(s)
