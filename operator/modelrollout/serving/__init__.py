"""Model servers: the inference-protocol client and the reference server."""
