"""Storage: where the raw store, the feature tables and the diagram cache live, on this machine or an object store.

``storage.url`` picks one place for them: by default the workspace folder (the files and paths of a single machine,
unchanged); another folder (a shared filesystem that every worker mounts at the same path: NFS works as it is); or an
fsspec URL such as ``s3://bucket/prefix``, any S3-compatible service through s3fs, with ``storage.options`` handed to
the filesystem (endpoint, credentials). Paths inside the store are relative and POSIX (``raw/ab/<sha256>.png``): the
metadata DB records them, and a Dask worker on another machine reads the bytes the driver would, from the store,
never from the driver's disk.

Every write is whole or absent. A local file is written beside its name and renamed (a killed writer's leftover is
``.<name>.<pid>.tmp``, which no reader lists); an object is one PUT, or a multipart upload that only appears when it
completes. So a kill never leaves a half-written file or object that a later run counts as present.

:meth:`Storage.check` reaches the store before a command writes anything: an object store without the bucket, without
credentials or behind an endpoint that does not answer is a :class:`StorageError` naming the URL and what went wrong,
within seconds (``storage.check_timeout_s``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from conveyor.config import Settings
from conveyor.errors import ConveyorError
from conveyor.workspace import PRIVATE, atomic_path, atomic_write

__all__ = ["FEATURES", "MLFLOW", "RAW", "Storage", "StorageError"]

RAW = "raw"
"""The raw store's folder in the store: ``raw/<sha[:2]>/<sha256>.<format>``, masks under ``raw/masks/``."""
FEATURES = "features"
"""The feature tables' and diagram cache's folder in the store."""
MLFLOW = "mlflow"
"""The embedded MLflow store's artifacts, when the store is not the workspace."""

_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


class StorageError(ConveyorError):
    """The store cannot be used: no bucket, no credentials, an endpoint that does not answer, a folder not writable."""


class Storage:
    """One store: a local folder, or a URL of any fsspec filesystem with its options.

    Picklable: it crosses to worker processes and Dask workers as its URL and options, and makes its filesystem
    again there (fsspec keeps one instance per process and options). Its ``repr`` never shows the options, which may
    hold credentials.
    """

    def __init__(self, url: str | Path, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})
        self._fs: Any = None
        found = _PROTOCOL.match(str(url))
        if found is None or found.group(1).lower() == "file":
            self.protocol = "file"
            # Absolute: a worker started in another folder (or on another machine, at the same mount) finds it too.
            self.root = Path(found.group(2) if found is not None else url).absolute()
            self.url = str(self.root)
            self._prefix = ""
        else:
            self.protocol = found.group(1).lower()
            self._prefix = found.group(2).strip("/")
            self.root = Path()  # not a local folder
            self.url = f"{self.protocol}://{self._prefix}"

    @classmethod
    def of(cls, settings: Settings) -> Storage:
        """The store of ``settings``: ``storage.url``, else the workspace."""
        return cls(settings.storage.url or settings.home, settings.storage.options)

    @property
    def local(self) -> bool:
        """Whether the store is a folder of this machine's filesystem (a local disk or a mounted share)."""
        return self.protocol == "file"

    @property
    def bucket(self) -> str:
        """An object store's bucket (or container): the URL's first component."""
        return self._prefix.split("/", 1)[0]

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["options"])  # type: ignore[misc]

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a remote store (made on first use, in each process)."""
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(self.protocol, **self.options)
        return self._fs

    def _key(self, relative: str) -> str:
        return f"{self._prefix}/{relative}".rstrip("/") if relative else self._prefix

    def path(self, relative: str) -> Path:
        """The local path of ``relative`` (a local store only).

        Raises:
            StorageError: the store is not local.
        """
        if not self.local:
            raise StorageError(f"storage.url {self.url}: an object store has no local paths (asked for {relative})")
        return self.root / relative

    def url_of(self, relative: str = "") -> str:
        """Where ``relative`` is, for people and for other tools (MLflow): an absolute path or a URL."""
        if self.local:
            return str((self.root / relative).resolve())
        return f"{self.protocol}://{self._key(relative)}"

    def read_bytes(self, relative: str) -> bytes:
        """The bytes of one file of the store: the one way conveyor reads a stored image.

        Raises:
            FileNotFoundError: no such file or object (an OSError, like every local failure).
        """
        if self.local:
            return (self.root / relative).read_bytes()
        return bytes(self.fs.cat_file(self._key(relative)))

    def read_many(self, relatives: Iterable[str]) -> dict[str, bytes | Exception]:
        """The bytes of several files, each or the error reading it; an object store fetches them concurrently (a
        chunk of images costs about one round trip, not one per image)."""
        wanted = list(dict.fromkeys(relatives))
        if self.local:
            out: dict[str, bytes | Exception] = {}
            for relative in wanted:
                try:
                    out[relative] = (self.root / relative).read_bytes()
                except OSError as exc:
                    out[relative] = exc
            return out
        if not wanted:
            return {}
        keys = {self._key(relative): relative for relative in wanted}
        found = self.fs.cat(list(keys), on_error="return")
        return {keys[key]: value if isinstance(value, Exception) else bytes(value) for key, value in found.items()}

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[IO[bytes]]:
        """``relative`` opened for reading, seekable (Parquet readers fetch the byte ranges they need)."""
        if self.local:
            with (self.root / relative).open("rb") as handle:
                yield handle
        else:
            with self.fs.open(self._key(relative), "rb") as handle:
                yield handle

    def exists(self, relative: str) -> bool:
        if self.local:
            return (self.root / relative).exists()
        return bool(self.fs.exists(self._key(relative)))

    def write_bytes(self, relative: str, data: bytes, *, private: bool = False) -> None:
        """Write one file whole or not at all (see the module docstring). ``private``: readable by its owner only
        (mode 0600, for copies of patients' images), where the store has modes."""
        if self.local:
            self._write_local(relative, data, private)
        else:
            self.fs.pipe_file(self._key(relative), data)

    def write_many(self, files: Mapping[str, bytes], *, private: bool = False) -> None:
        """:meth:`write_bytes` of several files; an object store sends them concurrently."""
        if self.local or len(files) < 2:
            for relative, data in files.items():
                self.write_bytes(relative, data, private=private)
        elif files:
            self.fs.pipe({self._key(relative): data for relative, data in files.items()})

    def _write_local(self, relative: str, data: bytes, private: bool) -> None:
        target = self.root / relative
        if target.parent not in _MADE_FOLDERS:
            target.parent.mkdir(parents=True, exist_ok=True)
            _MADE_FOLDERS.add(target.parent)
        mode = PRIVATE if private else 0o666
        try:
            atomic_write(target, data, make_parent=False, mode=mode)
        except FileNotFoundError:  # the folder was removed since this process made it (a long-lived server)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, make_parent=False, mode=mode)

    @contextlib.contextmanager
    def writing(self, relative: str) -> Iterator[Path]:
        """A local path to write ``relative`` to (by a library that writes files, such as Parquet's writer); when the
        block ends it becomes ``relative`` in the store, whole, and if the block raises it never appears."""
        if self.local:
            with atomic_path(self.root / relative) as tmp:
                yield tmp
            return
        fd, name = tempfile.mkstemp(prefix=".conveyor-", suffix=PurePosixPath(relative).suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            self.fs.put_file(str(tmp), self._key(relative))
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, folder: str, pattern: str = "*") -> list[str]:
        """The files directly in ``folder`` whose names match ``pattern`` (a glob), as sorted relative paths; none
        when the folder does not exist. Never a partial write's leftover (``.<name>.<pid>.tmp``) unless asked."""
        if self.local:
            base = self.root / folder
            if not base.is_dir():
                return []
            return sorted(f"{folder}/{p.name}" if folder else p.name for p in base.glob(pattern) if p.is_file())
        key = self._key(folder)
        self.fs.invalidate_cache(key)  # another process (a worker) may have written since this one last listed
        found = self.fs.glob(f"{key}/{pattern}")
        start = len(self._prefix) + 1 if self._prefix else 0
        return sorted(str(name)[start:] for name in found)

    def remove(self, relatives: Iterable[str]) -> None:
        """Delete files (those already absent are no error)."""
        wanted = list(relatives)
        if self.local:
            for relative in wanted:
                (self.root / relative).unlink(missing_ok=True)
        elif wanted:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm([self._key(relative) for relative in wanted])

    def remove_partial_writes(self, folder: str) -> None:
        """Delete what killed writers left in ``folder`` of a local store (``.<name>.<pid>.tmp``); call it only
        while holding the workspace lock. An object store has no partial objects to remove."""
        base = self.root / folder
        if self.local and base.is_dir():
            for leftover in base.rglob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    def check(self, timeout_s: float = 5.0) -> None:
        """Reach the store, or fail within seconds saying what is wrong, before anything is written.

        A folder must exist or be creatable, and be writable; an object store's bucket must answer, with the
        credentials given (retried once at most, each attempt bounded by ``timeout_s``).

        Raises:
            StorageError: naming ``storage.url`` and what went wrong.
        """
        if self.local:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if not os.access(self.root, os.W_OK | os.X_OK):
                    raise PermissionError(f"{self.root} is not writable by this user")
            except OSError as exc:
                raise StorageError(f"storage.url {self.url}: the folder cannot be used ({exc})") from exc
            return
        import fsspec

        try:
            fsspec.get_filesystem_class(self.protocol)
        except (ValueError, ImportError) as exc:
            raise StorageError(f"storage.url {self.url}: no filesystem for {self.protocol}:// ({exc})") from exc
        try:
            probe = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._quick(timeout_s))
            if self.protocol in _S3:
                probe.retries = 1  # s3fs's own retries on top of botocore's, which _quick turned off
                # One listing of the store's own prefix: what conveyor needs, and all that credentials limited to the
                # prefix may do (HeadBucket asks for more).
                inside = self._prefix.partition("/")[2]
                probe.call_s3("list_objects_v2", Bucket=self.bucket, Prefix=f"{inside}/" if inside else "", MaxKeys=1)
            else:
                probe.info(self.bucket)
        except Exception as exc:  # whatever the filesystem raises: every failure here is the store's
            raise StorageError(f"storage.url {self.url}: {self._explain(exc)}") from exc

    def _quick(self, timeout_s: float) -> dict[str, Any]:
        """The options, with an S3 client that gives up after one attempt of ``timeout_s`` at most."""
        options = dict(self.options)
        if self.protocol in _S3:
            config = dict(options.get("config_kwargs") or {})
            config.update(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
            options["config_kwargs"] = config
        return options

    @property
    def endpoint(self) -> str | None:
        """An S3-compatible store's endpoint URL, when the options name one; else the one boto3 takes from the
        environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``); else None (AWS's own)."""
        client = self.options.get("client_kwargs") or {}
        return self.options.get("endpoint_url") or client.get("endpoint_url")

    def _endpoint_shown(self) -> str:
        shown = self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return shown or "AWS's default endpoint"

    def _explain(self, exc: Exception) -> str:
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return (
                "no credentials: set storage.options key and secret, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"({exc})"
            )
        if isinstance(exc, FileNotFoundError):
            return f"the bucket {self.bucket!r} does not exist ({exc})"
        if isinstance(exc, PermissionError):
            return f"access to the bucket {self.bucket!r} is denied: check the credentials ({exc})"
        if isinstance(exc, ConnectionError | TimeoutError) or "Connect" in name or "Timeout" in name:
            return f"the endpoint {self._endpoint_shown()} does not answer ({exc})"
        return f"{name}: {exc}"

    def mlflow_environment(self) -> dict[str, str]:
        """The environment MLflow's S3 artifact store reads (it does not take fsspec options): the endpoint and
        credentials of ``storage.options``. Empty for any other store, or where the options name none."""
        if self.protocol not in _S3:
            return {}
        client = self.options.get("client_kwargs") or {}
        values = {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.options.get("key") or self.options.get("username"),
            "AWS_SECRET_ACCESS_KEY": self.options.get("secret") or self.options.get("password"),
            "AWS_SESSION_TOKEN": self.options.get("token"),
            "AWS_DEFAULT_REGION": client.get("region_name"),
        }
        return {name: str(value) for name, value in values.items() if value}


_S3 = frozenset({"s3", "s3a"})
_MADE_FOLDERS: set[Path] = set()  # folders this process made or found, so a write skips the mkdir
