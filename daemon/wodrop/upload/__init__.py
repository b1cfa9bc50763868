"""Resumable uploads to the platform: pure protocol core, aiohttp transport, batch API, uploader."""
