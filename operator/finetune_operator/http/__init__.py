"""The operator's HTTP endpoints: health, queue visibility, progress reports, /metrics; their
TLS, authentication and per-client limits."""
