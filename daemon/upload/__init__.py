"""Resumable uploads to the platform: pure protocol core, aiohttp transport, batch API, uploader."""

from daemon.upload.protocol import (
    ArchiveChanged,
    AuthRefused,
    RetryPolicy,
    ServerCopy,
    SessionExpired,
    UploadError,
    UploadGaveUp,
    UploadRejected,
)

__all__ = [
    "ArchiveChanged",
    "AuthRefused",
    "RetryPolicy",
    "ServerCopy",
    "SessionExpired",
    "UploadError",
    "UploadGaveUp",
    "UploadRejected",
]
