"""The pure engine: no I/O, no Kubernetes, no HTTP. Everything here is deterministic."""
