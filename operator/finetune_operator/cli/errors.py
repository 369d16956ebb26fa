"""Errors of the kubectl plugin: every message says what went wrong and what to do next."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error; ``str(e)`` is printed as ``error: <message>`` with exit code 1."""


def api_error_message(status: int, detail: str, *, verb: str, namespace: str | None,
                      name: str | None = None, server: str = "") -> str:
    """A Kubernetes API error (HTTP status + the server's message) in plain words.

    ``verb`` is what the plugin tried, e.g. ``"create"``, ``"list"``, ``"patch"``.
    """
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    target = f"FineTuneJob {name}" if name else "FineTuneJobs"
    ns_flag = f" -n {namespace}" if namespace else ""
    detail = detail.strip()
    if status == 401:
        return (f"the API server{_at(server)} rejected the credentials: "
                f"{detail or 'Unauthorized'}; refresh them or pick another --context or "
                "--kubeconfig")
    if status == 403:
        scope = "" if namespace else "; list a single namespace with -n NAMESPACE instead of -A"
        return (f"not allowed to {verb} {target} {where}: {detail}; ask your platform team for "
                f"the finetune-operator edit/view role in that namespace{scope}")
    if status == 404 and name:
        return (f"FineTuneJob {name} not found in namespace {namespace}; "
                f"list them with kubectl finetune list{ns_flag}")
    if status == 404:
        return (f"the FineTuneJob API (finetune.dev/v1alpha1) is not served{_at(server)}: "
                f"{detail or 'Not Found'}; install the finetune-operator chart (docs/install.md) "
                "or check --context")
    if status == 409:
        return (f"FineTuneJob {name} already exists in namespace {namespace}; pick another --name "
                f"or delete it first (kubectl delete finetunejob {name}{ns_flag})")
    if status == 422:
        return f"the API server rejected FineTuneJob {name or ''}: {detail}; fix the field it names"
    return f"{verb} {target} {where} failed: HTTP {status}: {detail}"


def _at(server: str) -> str:
    return f" at {server}" if server else ""
