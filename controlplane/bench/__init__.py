"""`make bench`: throughput, latency, drift-check time and memory, measured side by side."""
