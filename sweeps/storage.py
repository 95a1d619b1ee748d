"""Where a results directory lives: a local folder or a prefix in an object store, through `pyarrow.fs`.

`location(text)` takes what `--out` (or `analysis`) is given: a local path, `gs://bucket/prefix`,
`s3://bucket/prefix`, or any other URI `pyarrow.fs.FileSystem.from_uri` knows. Endpoints and
credentials come the way the clouds' own clients take them:

- `gs://`: default credentials on a VM (or `GOOGLE_APPLICATION_CREDENTIALS`); with
  `STORAGE_EMULATOR_HOST` set (as for Google's Python client), the emulator at that host,
  anonymously.
- `s3://`: the AWS credential chain; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an
  S3-compatible server.

Writes differ by kind. A local file is written to a dot-prefixed temporary and renamed (atomic on
POSIX). An object store has no rename, so an object is uploaded in one write of bytes already
complete in memory: the store publishes it whole or not at all; readers check Parquet footers
as the backstop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import posixpath
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

OBJECT_SCHEMES = ("gs", "gcs", "s3")
# What reading a file that is not (or no longer) a whole Parquet file raises.
UNREADABLE = (OSError, pa.ArrowException)


def probe_timeout_s() -> float:
    """Seconds the up-front bucket check may retry (CONTAMINATION_PROBE_TIMEOUT_S, default 10)."""
    return float(os.environ.get("CONTAMINATION_PROBE_TIMEOUT_S", "10"))


class StorageError(ValueError):
    """A results location that cannot be used (bad URI, missing or unreachable bucket): one line."""


def is_uri(text: str | Path) -> bool:
    return "://" in str(text)


@dataclasses.dataclass(frozen=True)
class Location:
    """A results directory: a filesystem and a root path in it.

    `uri` is how it is shown (the local path as given, or `scheme://bucket/prefix`)."""

    fs: pafs.FileSystem
    root: str
    uri: str
    local: bool

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> Location:
        return self.child(part)

    def child(self, *parts: str) -> Location:
        return dataclasses.replace(self, root=self.path(*parts), uri=_join_uri(self.uri, *parts))

    @property
    def name(self) -> str:
        return posixpath.basename(self.root.rstrip("/"))

    @property
    def parent(self) -> Location:
        root = posixpath.dirname(self.root.rstrip("/"))
        uri = self.uri.rstrip("/").rsplit("/", 1)[0] if "/" in self.uri.rstrip("/") else "."
        return dataclasses.replace(self, root=root, uri=uri)

    @property
    def bucket(self) -> str | None:
        return None if self.local else self.root.split("/", 1)[0]

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def local_path(self) -> Path:
        if not self.local:
            raise StorageError(f"{self}: not a local directory")
        return Path(self.uri)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def files(self, sub: str = "", *, suffix: str = "", prefix: str = "", hidden: bool = False) -> list[str]:
        """Sorted names of the files directly in `sub` (none when it does not exist)."""
        return list(self.listing(sub, suffix=suffix, prefix=prefix, hidden=hidden))

    def listing(self, sub: str = "", *, suffix: str = "", prefix: str = "",
                hidden: bool = False) -> dict[str, tuple[int, int]]:
        """`files`, each with its size and modification time in ns (-1 where the store gives none)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(sub) if sub else self.root, allow_not_found=True))
        found = {i.base_name: (i.size, -1 if i.mtime_ns is None else i.mtime_ns)
                 for i in infos if i.type == pafs.FileType.File}
        return {n: found[n] for n in sorted(found) if n.endswith(suffix) and n.startswith(prefix)
                and (hidden or not n.startswith("."))}

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_file(self.path(*parts)) as f:
            return f.read()

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        """A Parquet file's table; raises one of `UNREADABLE` when its footer or data do not read."""
        return pq.read_table(self.path(*parts), filesystem=self.fs, columns=columns)

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Publish `data` whole at `parts`: temporary and rename locally, one upload on an object store."""
        path = self.path(*parts)
        if self.local:
            parent, name = posixpath.split(path)
            tmp = posixpath.join(parent, f".tmp-{name}-{os.getpid()}")
            for attempt in range(3):  # a folder emptied by another process may vanish meanwhile (leases/)
                os.makedirs(parent, exist_ok=True)
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            os.replace(tmp, path)
            return
        stream = self.fs.open_output_stream(path)
        stream.write(data)
        stream.close()

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def delete(self, *parts: str) -> None:
        try:
            self.fs.delete_file(self.path(*parts))
        except FileNotFoundError:
            pass

    def make_dirs(self, *parts: str) -> None:
        """Local only: object stores have no directories to make."""
        if self.local:
            os.makedirs(self.path(*parts), exist_ok=True)


def _join_uri(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if uri not in ("", ".") else "/".join(parts)


def location(where: str | Path | Location) -> Location:
    """The results location `where` names (see the module's docstring)."""
    if isinstance(where, Location):
        return where
    text = str(where)
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), os.path.abspath(text), text, True)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    path = rest.strip("/")
    if scheme in OBJECT_SCHEMES:
        if not path or path.startswith("/"):
            raise StorageError(f"{text}: expected {scheme}://BUCKET/PREFIX")
        fs = _object_fs(scheme, probe=False)
        return Location(fs, path, f"{scheme}://{path}", False)
    if scheme == "file":
        return location(rest)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError, pa.ArrowException) as e:
        raise StorageError(f"{text}: not a filesystem pyarrow can open ({_first_line(e)})") from None
    return Location(fs, path, text, isinstance(fs, pafs.LocalFileSystem))


def _object_fs(scheme: str, *, probe: bool) -> pafs.FileSystem:
    """The object store's filesystem; `probe`: short retries, for the up-front check."""
    if scheme in ("gs", "gcs"):
        kw: dict = {}
        if probe:
            kw["retry_time_limit"] = dt.timedelta(seconds=probe_timeout_s())
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        if host:
            url_scheme, _, hostport = host.rpartition("://")
            return pafs.GcsFileSystem(anonymous=True, scheme=url_scheme or "http", endpoint_override=hostport, **kw)
        return pafs.GcsFileSystem(**kw)
    kw = {}
    if probe:
        kw.update(connect_timeout=probe_timeout_s(), request_timeout=probe_timeout_s(),
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["endpoint_override"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def check_reachable(loc: Location) -> None:
    """Refuse, in one line, a bucket that is missing or cannot be reached (before anything trains)."""
    if loc.local:
        return
    scheme = loc.uri.split("://", 1)[0]
    bucket = loc.bucket
    hint = ("set STORAGE_EMULATOR_HOST for an emulator, or check the VM's credentials" if scheme in ("gs", "gcs")
            else "set AWS_ENDPOINT_URL for an S3-compatible server, or check the credentials")
    try:
        info = _object_fs(scheme, probe=True).get_file_info(bucket)
    except (OSError, ValueError) as e:
        raise StorageError(f"{scheme}://{bucket}: cannot reach the bucket ({_first_line(e)[:200]}); {hint}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{scheme}://{bucket}: no such bucket (create it first, e.g. "
                           f"{'gcloud storage buckets create' if scheme != 's3' else 'aws s3 mb'} {scheme}://{bucket})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def staged(loc: Location):
    """A local folder to write files into, published under `loc` when the block ends.

    For a local location it is the folder itself; for an object store, a temporary folder whose
    files are uploaded (each in one write) afterwards, e.g. for matplotlib figures and reports.
    """
    if loc.local:
        path = loc.local_path()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="contamination-stage-") as tmp:
        yield Path(tmp)
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                loc.write_bytes(f.read_bytes(), *f.relative_to(tmp).parts)
