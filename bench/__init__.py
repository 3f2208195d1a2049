"""Build-time benchmarks (never imported by the device path)."""
