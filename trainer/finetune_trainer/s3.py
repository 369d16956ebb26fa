"""Object storage (S3 and S3-compatible stores): reading sources, writing the output.

* The client is the MinIO Python SDK (Apache-2.0; only the MinIO *server* is AGPL), which speaks
  to AWS S3 and any S3-compatible store. Not boto3: botocore pins python-dateutil < 3, which the
  operator's kubernetes client (>= 3) excludes from the one development environment.
* Credentials come from the environment the operator set from the job's Secret,
  ``FINETUNE_S3_<ROLE>_AWS_ACCESS_KEY_ID`` and friends (``trainer_config.s3_env_name``); without
  them, the standard AWS variables, then the pod's workload identity (web identity token or
  instance role). They are never logged.
* Downloads stream into ``<name>.part`` in chunks and are renamed into place once complete and
  checked (size, and the MD5 where the ETag is one): an interrupted download leaves no file under
  the final name, and the next attempt starts that object again. The stop flag is looked at
  between chunks, so SIGTERM during a download stops within one chunk.
* A pinned object is read by its version id when the bucket is versioned, else with
  ``If-Match: <ETag>``: a changed object then fails with a message, never trains silently on
  other bytes.
* Uploads are checked by the store (the SDK sends each body's Content-MD5 over HTTPS and signs
  its SHA-256 over HTTP) and finish with a ``SHA256SUMS`` manifest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.spec import S3Location
from finetune_api.trainer_config import S3_CREDENTIAL_KEYS, s3_env_name
from finetune_trainer.config import ConfigError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MANIFEST = "SHA256SUMS"


class DownloadStopped(Exception):
    """SIGTERM arrived during a download (the partial file was removed) or an upload."""


class SourceChanged(ConfigError):
    """A pinned object changed and the bucket keeps no versions to read the pinned one."""


@dataclass(frozen=True)
class ObjectRef:
    key: str
    etag: str
    size: int
    version_id: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "etag": self.etag, "size": self.size,
                "versionId": self.version_id}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ObjectRef:
        return cls(key=str(d["key"]), etag=str(d["etag"]), size=int(d["size"]),
                   version_id=str(d.get("versionId") or ""))


def uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def client(loc: S3Location, role: str) -> Any:
    """A client for ``loc`` with the role's credentials (path-style for custom endpoints,
    which is what S3-compatible stores serve)."""
    from minio import Minio
    from minio.credentials import (
        AWSConfigProvider,
        ChainedProvider,
        EnvAWSProvider,
        IamAwsProvider,
    )

    if loc.endpoint:
        url = urllib.parse.urlsplit(loc.endpoint)
        host, secure = url.netloc, url.scheme == "https"
    else:
        host, secure = "s3.amazonaws.com", True
    keys = {k: os.environ.get(s3_env_name(role, k)) for k in S3_CREDENTIAL_KEYS}
    if keys["AWS_ACCESS_KEY_ID"] and keys["AWS_SECRET_ACCESS_KEY"]:
        return Minio(host, access_key=keys["AWS_ACCESS_KEY_ID"],
                     secret_key=keys["AWS_SECRET_ACCESS_KEY"],
                     session_token=keys["AWS_SESSION_TOKEN"] or None, secure=secure,
                     region=loc.region)
    chain = ChainedProvider([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider()])
    return Minio(host, credentials=chain, secure=secure, region=loc.region)


def _explain(e: Exception, what: str) -> Exception:
    """A ConfigError (exit 2) for what retrying cannot fix, else the error itself (exit 1)."""
    from minio.error import S3Error

    if isinstance(e, S3Error):
        status = e.response.status if e.response is not None else 0
        code = str(e.code)
        if code in ("PreconditionFailed",) or status == 412:
            return SourceChanged(f"{what}: the object changed since the first attempt pinned "
                                 "it and the bucket is not versioned; restore it or submit a "
                                 "new job")
        if code in ("NoSuchBucket", "NoSuchKey", "NoSuchVersion", "ResourceNotFound") \
                or status == 404:
            return ConfigError(f"{what}: not found ({code}); check bucket, key/prefix and "
                               "versionId")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") \
                or status == 403:
            return ConfigError(f"{what}: access denied ({code}); check credentialsSecret and "
                               "the bucket's policy")
    if isinstance(e, ValueError) and "credential" in str(e).lower():
        return ConfigError(f"{what}: no S3 credentials; set credentialsSecret to a Secret with "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return e


def _version(v: Any) -> str:
    return "" if v in (None, "", "null") else str(v)


def head(c: Any, bucket: str, key: str, version_id: str = "") -> ObjectRef:
    try:
        st = c.stat_object(bucket, key, version_id=version_id or None)
    except Exception as e:
        raise _explain(e, uri(bucket, key)) from None
    return ObjectRef(key=key, etag=str(st.etag).strip('"'), size=int(st.size),
                     version_id=_version(st.version_id))


def list_prefix(c: Any, bucket: str, prefix: str) -> list[ObjectRef]:
    """Every object under ``prefix`` (keys ending in '/' are folder markers, skipped), each
    with its current version id (a HEAD per object: models have few files)."""
    out = []
    try:
        for o in c.list_objects(bucket, prefix=prefix, recursive=True):
            if not o.is_dir and not str(o.object_name).endswith("/"):
                out.append(head(c, bucket, str(o.object_name)))
    except ConfigError:
        raise
    except Exception as e:
        raise _explain(e, uri(bucket, prefix)) from None
    if not out:
        raise ConfigError(f"{uri(bucket, prefix)}: no objects under this prefix; check "
                          "spec.model.source.s3.bucket and prefix")
    return out


def _md5_etag(etag: str) -> bool:
    """A single-part upload's ETag is the MD5 of the bytes (multipart ones carry a '-N')."""
    return len(etag) == 32 and all(ch in "0123456789abcdef" for ch in etag.lower())


def download(c: Any, bucket: str, obj: ObjectRef, dest: Path,
             stopped: Callable[[], bool]) -> None:
    """Download ``obj`` (exactly that version/ETag) to ``dest`` via ``dest.part``."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    where = uri(bucket, obj.key)
    try:
        if obj.version_id:
            body = c.get_object(bucket, obj.key, version_id=obj.version_id)
        else:
            body = c.get_object(bucket, obj.key, request_headers={"If-Match": f'"{obj.etag}"'})
    except Exception as e:
        raise _explain(e, where) from None
    etag = str(body.headers.get("ETag", "")).strip('"')
    if etag != obj.etag:  # a version id names fixed bytes; this is only a consistency check
        body.close()
        body.release_conn()
        raise SourceChanged(f"{where}: ETag {etag} is not the pinned {obj.etag}; restore the "
                            "object or submit a new job")
    md5, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with open(part, "wb") as f:
            for chunk in body.stream(CHUNK):
                if stopped():
                    raise DownloadStopped(f"stopped while downloading {where}")
                f.write(chunk)
                md5.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        body.close()
        body.release_conn()
    if size != obj.size or (_md5_etag(obj.etag) and md5.hexdigest() != obj.etag.lower()):
        part.unlink(missing_ok=True)
        raise OSError(f"{where}: downloaded {size} bytes that do not match the object "
                      f"({obj.size} bytes, ETag {obj.etag}); the next attempt downloads again")
    os.replace(part, dest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def upload_dir(c: Any, bucket: str, prefix: str, local: Path,
               stopped: Callable[[], bool] = lambda: False) -> str:
    """Upload every file of ``local`` under ``prefix/`` (each body checked by the store), then
    a SHA256SUMS manifest (written last: its presence means the upload is whole); returns the
    s3:// URI of the directory. The stop flag is looked at between files."""
    prefix = prefix.rstrip("/") + "/"
    lines = []
    for p in sorted(x for x in local.rglob("*") if x.is_file()):
        if stopped():
            raise DownloadStopped(f"stopped while uploading {local} to {uri(bucket, prefix)}")
        rel = p.relative_to(local).as_posix()
        lines.append(f"{_sha256(p)}  {rel}")
        with open(p, "rb") as f:
            try:
                c.put_object(bucket, prefix + rel, f, p.stat().st_size)
            except Exception as e:
                raise _explain(e, uri(bucket, prefix + rel)) from None
    body = ("\n".join(lines) + "\n").encode()
    try:
        c.put_object(bucket, prefix + MANIFEST, io.BytesIO(body), len(body),
                     content_type="text/plain")
    except Exception as e:
        raise _explain(e, uri(bucket, prefix + MANIFEST)) from None
    log.info("uploaded %d files of %s to %s", len(lines), local, uri(bucket, prefix))
    return uri(bucket, prefix)
