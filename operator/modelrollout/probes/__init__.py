"""Probes of a running model server: load, latency, throughput, memory, CPU, leaks."""
