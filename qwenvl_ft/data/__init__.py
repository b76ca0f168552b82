"""Data: neutral conversations (readers) and per-generation encoding (ids, labels, pixels)."""
