"""Benchmarks one command away: `indis bench` (latency per NFE and backend), `indis bench --quality`."""
