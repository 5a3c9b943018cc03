"""Provenance of generated images: the invisible watermark, the GB 45438-2025 labels, tracing."""
