"""The report channel: trainer pods push progress to the operator over HTTPS (docs/contracts.md
"Progress channel"). ``model`` (pure, shared with the trainer) parses what a pod reports;
``identity`` maps a projected ServiceAccount token to its pod (TokenReview); ``server`` is the
endpoint; ``rejects`` counts and logs dropped reports; ``tls`` makes a dev serving certificate.

Nothing here is imported by this ``__init__``: the trainer imports ``model`` without pulling in
the operator's dependencies (prometheus_client, kubernetes)."""
