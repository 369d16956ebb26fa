"""The base model from object storage: ``--model s3://BUCKET/PREFIX`` is downloaded at start
into a local directory (``--s3-download-dir``, under the pod's ``/tmp`` emptyDir), which is what
the runtime then loads.

* The client is the MinIO Python SDK (the ``s3`` extra; the trainer's pin): AWS S3 or any
  S3-compatible store (``--s3-endpoint``: scheme, host, port; path-style requests).
* Credentials only from the environment, never from the command line, and never logged:
  ``FINETUNE_S3_MODEL_AWS_ACCESS_KEY_ID``, ``..._AWS_SECRET_ACCESS_KEY`` and optionally
  ``..._AWS_SESSION_TOKEN`` (what the operator sets from the ModelServer's
  ``spec.model.source.s3.credentialsSecret``, the names the trainer reads for its model); without
  them the standard AWS variables, the AWS config files, then the pod's instance or web-identity
  role.
* Every object under the prefix (folder markers skipped) is downloaded into a staging directory,
  each into ``<name>.part`` and renamed once its size (and its MD5, where the ETag is one and no
  SSE-KMS/SSE-C hides it) match the listing; the staging directory becomes the model directory
  only when all are there, with a marker holding the listing's digest, so a start that finds the
  same listing there reads nothing again. A key whose path below the prefix is empty or has an
  empty, '.' or '..' segment is refused before anything is written; a directory the runtime did
  not fill is never overwritten.
* A failure is a :class:`FetchError` whose message says what failed, why, and what to do.

The parsing and checking functions are pure; :func:`fetch` is the shell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
DEFAULT_DOWNLOAD_DIR = "/tmp/finetune-model"
# the names the operator sets from credentialsSecret, role "model" (finetune_api.trainer_config
# s3_env_name: the trainer's names; this package imports none of ours, a unit test compares them)
ACCESS_KEY_ENV = "FINETUNE_S3_MODEL_AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "FINETUNE_S3_MODEL_AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV = "FINETUNE_S3_MODEL_AWS_SESSION_TOKEN"
MARKER = ".finetune-model.json"  # in a complete model directory: the listing it holds
CHUNK = 1 << 20
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "InvalidSecurity")
_NOT_FOUND = ("NoSuchBucket", "NoSuchKey", "ResourceNotFound")


class FetchError(Exception):
    """The model could not be downloaded; the message says what, why and what to do."""


@dataclass(frozen=True)
class S3Model:
    bucket: str
    prefix: str  # ends with '/'
    endpoint: str | None = None
    region: str = DEFAULT_REGION

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    @property
    def where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region})"


@dataclass(frozen=True)
class Obj:
    key: str
    size: int
    etag: str


def is_s3(model: str) -> bool:
    return model.startswith(SCHEME)


def parse_uri(uri: str, endpoint: str | None = None, region: str = DEFAULT_REGION) -> S3Model:
    """``s3://BUCKET/PREFIX`` (the prefix of a model directory; a trailing '/' is implied)."""
    bucket, _, prefix = uri.removeprefix(SCHEME).partition("/")
    prefix = prefix.rstrip("/")
    if not bucket or not prefix:
        raise ValueError(f"--model {uri!r} is not s3://BUCKET/PREFIX: give the bucket and the key "
                         "prefix of the model directory, e.g. s3://models/base/qwen2.5-0.5b")
    if any(seg in (".", "..") for seg in prefix.split("/")):  # as the api's S3 keys
        raise ValueError(f"--model {uri!r}: the prefix must not contain '.' or '..' segments")
    if endpoint is not None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
            raise ValueError(f"--s3-endpoint {endpoint!r} is not scheme://host[:port], e.g. "
                             "https://s3.example.com:9000")
    return S3Model(bucket, prefix + "/", endpoint, region)


def relative(key: str, prefix: str) -> str:
    """Where object ``key`` goes in the model directory; refuses what would leave it."""
    rel = key[len(prefix):] if key.startswith(prefix) else ""
    if not rel or any(seg in ("", ".", "..") for seg in rel.split("/")):
        raise FetchError(f"object {key!r}: its path below the prefix {prefix} is empty or has "
                         "an empty, '.' or '..' segment, so it cannot be written into the model "
                         "directory; rename or remove the object")
    return rel


def plan(objects: Iterable[Obj], m: S3Model) -> list[tuple[Obj, str]]:
    """Each object to download and its path in the model directory (folder markers, keys
    ending in '/', are skipped)."""
    out = [(o, relative(o.key, m.prefix)) for o in objects if not o.key.endswith("/")]
    if not out:
        raise FetchError(f"{m.uri}: no objects under this prefix at {m.where}; check the bucket "
                         "and prefix (spec.model.source.s3) and that the model was uploaded")
    rels = [r for _, r in out]
    clash = sorted({r for r in rels for other in rels if other.startswith(r + "/")})
    if clash:
        raise FetchError(f"{m.uri}: {clash[0]} is both a file and a folder below the prefix; "
                         "remove one of them")
    return out


def listing_digest(objects: Iterable[Obj]) -> str:
    rows = sorted((o.key, o.size, o.etag) for o in objects)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def md5_etag(etag: str) -> bool:
    """A single-part upload's ETag is the MD5 of its bytes (a multipart one has '-N')."""
    return len(etag) == 32 and all(ch in "0123456789abcdef" for ch in etag.lower())


def credentials(env: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    """The model role's keys from ``env``, or None (then the standard AWS chain)."""
    access, secret = env.get(ACCESS_KEY_ENV), env.get(SECRET_KEY_ENV)
    if access and secret:
        return access, secret, env.get(SESSION_TOKEN_ENV) or None
    return None


def explain(m: S3Model, code: str, status: int) -> str:
    """The message for an error answer of the store (its code only: never a credential)."""
    head = f"cannot download the base model {m.uri} from {m.where}"
    why = code or f"HTTP {status}"
    if code in _DENIED or status == 403:
        return (f"{head}: access denied ({why}); check the credentials ({ACCESS_KEY_ENV} and "
                f"{SECRET_KEY_ENV}: the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY of the "
                "Secret named by spec.model.source.s3.credentialsSecret) and that the bucket's "
                "policy lets them list and read the prefix")
    if code in _NOT_FOUND or status == 404:
        return (f"{head}: not found ({why}); check spec.model.source.s3: bucket, prefix, "
                "endpoint and region")
    if code == "PreconditionFailed" or status == 412:
        return (f"{head}: an object changed between the listing and its download ({why}): is "
                "the model being uploaded? Start the server once the upload is complete")
    return (f"{head}: the store answered {why}; check the store (the operator starts the "
            "server's pod again a few times)")


def client(m: S3Model, env: Mapping[str, str]) -> Any:
    """A MinIO client for ``m`` with the model role's credentials (see the module's doc)."""
    try:
        from minio import Minio
        from minio.credentials import (
            AWSConfigProvider,
            ChainedProvider,
            EnvAWSProvider,
            IamAwsProvider,
        )
    except ImportError:
        raise FetchError("--model s3://... needs the MinIO SDK: pip install "
                         "'finetune-server[s3]' (the server image has it)") from None
    if m.endpoint:
        url = urllib.parse.urlsplit(m.endpoint)
        host, secure = url.netloc, url.scheme == "https"
    else:
        host, secure = "s3.amazonaws.com", True
    keys = credentials(env)
    if keys is not None:
        return Minio(host, access_key=keys[0], secret_key=keys[1], session_token=keys[2],
                     secure=secure, region=m.region)
    chain = ChainedProvider([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider()])
    return Minio(host, credentials=chain, secure=secure, region=m.region)


def _fail(m: S3Model, e: Exception) -> FetchError:
    from minio.error import S3Error

    if isinstance(e, S3Error):
        status = e.response.status if e.response is not None else 0
        return FetchError(explain(m, str(e.code or ""), status))
    if isinstance(e, ValueError) and "credential" in str(e).lower():
        return FetchError(f"cannot download the base model {m.uri}: no S3 credentials (neither "
                          f"{ACCESS_KEY_ENV}/{SECRET_KEY_ENV} nor a role of the pod); set "
                          "spec.model.source.s3.credentialsSecret to a Secret with "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    # connection errors name the host and the cause, never a credential
    cause = getattr(e, "reason", None) or e  # urllib3's MaxRetryError: the last cause
    return FetchError(f"cannot download the base model {m.uri} from {m.where}: "
                      f"{type(cause).__name__}: {cause}; check spec.model.source.s3.endpoint "
                      "and that the pod can reach it")


def _list(c: Any, m: S3Model) -> list[Obj]:
    try:
        return [Obj(str(o.object_name), int(o.size or 0), str(o.etag or "").strip('"'))
                for o in c.list_objects(m.bucket, prefix=m.prefix, recursive=True)
                if not o.is_dir]
    except Exception as e:
        raise _fail(m, e) from None


def _download(c: Any, m: S3Model, o: Obj, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        body = c.get_object(m.bucket, o.key, request_headers={"If-Match": f'"{o.etag}"'})
    except Exception as e:
        raise _fail(m, e) from None
    # with SSE-KMS or SSE-C, AWS's ETag is no MD5 even for a single part: the size is checked
    headers = {k.lower(): str(v) for k, v in dict(body.headers).items()}
    check_md5 = md5_etag(o.etag) and not (
        headers.get("x-amz-server-side-encryption", "").startswith("aws:kms")
        or "x-amz-server-side-encryption-customer-algorithm" in headers)
    md5, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with open(part, "wb") as f:
            for chunk in body.stream(CHUNK):
                f.write(chunk)
                md5.update(chunk)
                size += len(chunk)
    except OSError as e:  # the local side: most likely a full /tmp
        part.unlink(missing_ok=True)
        raise FetchError(f"cannot write {dest} ({e.strerror or e}): the model needs its size "
                         "free in --s3-download-dir (in the pod, the /tmp emptyDir on the node's "
                         "ephemeral storage); free space there or use a node with more") from None
    except Exception as e:
        part.unlink(missing_ok=True)
        raise _fail(m, e) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        body.close()
        body.release_conn()
    if size != o.size or (check_md5 and md5.hexdigest() != o.etag.lower()):
        part.unlink(missing_ok=True)
        raise FetchError(f"cannot download the base model {m.uri}: {o.key} came as {size} bytes "
                         f"that do not match the listing ({o.size} bytes, ETag {o.etag}): was "
                         "it overwritten during the download? Upload the model again, then "
                         "restart the server")
    os.replace(part, dest)


def _ours(d: Path) -> bool:
    return (d / MARKER).is_file()


def fetch(m: S3Model, dest: Path, env: Mapping[str, str] | None = None) -> Path:
    """Download every object under ``m``'s prefix into ``dest`` (kept when it already holds
    this listing, complete); returns ``dest``."""
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or (not _ours(dest) and any(dest.iterdir()))):
        raise FetchError(f"--s3-download-dir {dest} is not empty and holds no downloaded model; "
                         "give an empty or new directory")
    c = client(m, os.environ if env is None else env)
    todo = plan(_list(c, m), m)
    digest = listing_digest(o for o, _ in todo)
    if _ours(dest):
        try:
            if json.loads((dest / MARKER).read_text()).get("listing") == digest:
                log.info("base model %s: already in %s (%d files)", m.uri, dest, len(todo))
                return dest
        except (OSError, ValueError):
            pass
    stage = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    total = sum(o.size for o, _ in todo)
    log.info("base model %s: downloading %d files (%d bytes) from %s into %s", m.uri, len(todo),
             total, m.where, dest)
    for o, rel in todo:
        _download(c, m, o, stage / rel)
    (stage / MARKER).write_text(json.dumps({"uri": m.uri, "listing": digest}))
    if dest.exists():
        shutil.rmtree(dest)  # an older download of ours (checked above)
    os.replace(stage, dest)
    log.info("base model %s: %d files in %s", m.uri, len(todo), dest)
    return dest
