"""The operator's Kubernetes API client and its watch-fed cache: the only code of the operator
that talks to the API server."""
