"""The report channel's data: trainer pods push progress to the operator over HTTPS
(docs/contracts.md "Progress channel"). ``model`` (pure) parses and bounds what a pod reports;
``rejects`` counts and logs dropped reports; ``channel`` starts the endpoint (``http/reports.py``,
with ``http/identity.py`` for the pod's token and ``http/tls.py`` for a dev certificate) and
builds the trainer config's ``report`` section.

Nothing here is imported by this ``__init__``, so importing ``model`` pulls in no server code."""
