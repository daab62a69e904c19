"""Where a job's files live: local paths, or URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``) of object
stores and distributed file systems, through fsspec (``s3fs``, ``gcsfs``; ``hdfs://`` goes to
``pyarrow.fs.HadoopFileSystem``, which needs libhdfs and a JVM).

:func:`as_path` turns a location into a ``Path``: a local path stays a plain ``pathlib.Path`` (``file://`` is
stripped), so local jobs keep their code and on-disk layout; a URI becomes an :class:`ObjectPath`, a ``Path``
whose I/O methods (``exists``, ``iterdir``, ``open``, ``read_text``, ``write_bytes``, ``stat``, ``glob``,
``rglob``, ``unlink``, ...) go to the remote file system and whose ``str`` is the URI. Calls that only make
sense locally (``os.replace``, ``open(path)``, ``shutil``) raise ``TypeError`` on an ObjectPath
(``__fspath__``), so a forgotten local-only call fails loudly instead of writing a local folder named ``s3:``.

Atomicity: object stores have no rename, but one object appears whole or not at all when its upload
completes, so :func:`write_bytes_atomic` writes small files directly there (elsewhere, e.g. HDFS: a temporary
name, then a move). A folder of several files (a checkpoint, a prepared data set) is committed by a marker
file written last (``meta.json``, ``summary.json``); readers treat a folder without it as absent.

Clients find the server from the environment: ``AWS_ENDPOINT_URL`` (or ``FSSPEC_S3_ENDPOINT_URL``),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (README "Object storage").

Example::

    run = as_path("s3://bucket/runs/demo")
    (run / "metrics.json").write_text("{}")  # one PUT: atomic
    assert is_remote(run) and str(run / "metrics.json") == "s3://bucket/runs/demo/metrics.json"
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Generator
from pathlib import Path, PosixPath
from typing import IO, Any

from crossrank.features.errors import InputError

# Protocols whose single-object writes are atomic (visible only once complete) and that have no rename.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
KNOWN_SCHEMES = OBJECT_STORES | {"hdfs", "viewfs", "webhdfs", "file"}
CACHE_ENV = "CROSSRANK_CACHE"  # local folder for caches (specs read from a URI, TensorBoard event files)


def is_uri(location: object) -> bool:
    """Whether ``location`` names a remote file system (``scheme://...``, not ``file://``)."""
    if isinstance(location, ObjectPath):
        return True
    text = str(location)
    return "://" in text and not text.startswith("file://") and text.split("://", 1)[0].isidentifier()


def as_path(location: str | os.PathLike[str]) -> Path:
    """A local ``Path`` (``file://`` stripped), or an :class:`ObjectPath` for a URI. A plain ``Path`` made
    from an ObjectPath (``Path(uri)`` keeps the parts ``s3:``, ``bucket``, ... but not the class) becomes an
    ObjectPath again: ``Path`` never sees a URI as local here."""
    if isinstance(location, ObjectPath):
        return location
    if isinstance(location, Path):
        first = location.parts[0] if location.parts else ""
        if not location.is_absolute() and first.endswith(":") and first[:-1] in KNOWN_SCHEMES:
            return ObjectPath(str(location).replace(":/", "://", 1))
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    return ObjectPath(text) if is_uri(text) else Path(text)


def is_remote(path: object) -> bool:
    """Whether ``path`` (a Path from :func:`as_path`) lives on a remote file system."""
    return isinstance(path, ObjectPath)


def _filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec file system, its path) for ``uri``, or an InputError naming the URI and the fix."""
    import fsspec.core  # type: ignore[import-untyped]

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as e:
        raise InputError(
            f"no client for this storage ({e}).",
            where=uri,
            fix="install the fsspec package of the scheme (s3fs for s3://, gcsfs for gs://), or use a local path.",
        ) from None
    except (OSError, ValueError) as e:
        hdfs = uri.startswith(("hdfs://", "viewfs://"))
        raise InputError(
            f"cannot open the file system of this URI ({str(e).splitlines()[0]}).",
            where=uri,
            fix="hdfs:// goes through pyarrow.fs.HadoopFileSystem, which needs a JVM and libhdfs: set JAVA_HOME, "
            "HADOOP_HOME and ARROW_LIBHDFS_DIR (and CLASSPATH from `hadoop classpath --glob`)."
            if hdfs
            else "use s3://, gs://, hdfs://, file:// or a local path.",
        ) from None
    fs.invalidate_cache()  # another process may have written since: never answer from a stale listing
    return fs, path


class ObjectPath(PosixPath):
    """A ``Path`` on a remote file system (see the module docstring); built by :func:`as_path`.

    ``Path("s3://b/k")`` keeps the parts ``("s3:", "b", "k")``: ``/``, ``name``, ``parent`` and
    ``with_name`` work as usual, and ``str`` puts the ``//`` back.
    """

    def __str__(self) -> str:
        return super().__str__().replace(":/", "://", 1)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __fspath__(self) -> str:
        raise TypeError(f"{self} is not a local path: use its methods or crossrank.features.storage")

    def as_posix(self) -> str:
        return str(self)

    @property
    def fs(self) -> Any:
        """The fsspec file system (listing cache cleared)."""
        return _filesystem(str(self))[0]

    @property
    def key(self) -> str:
        """The path inside the file system (``bucket/key`` for S3)."""
        return str(_filesystem(str(self))[1])

    def _child(self, fs_path: str) -> ObjectPath:
        return ObjectPath(f"{str(self).split('://', 1)[0]}://{fs_path.rstrip('/')}")

    def resolve(self, strict: bool = False) -> ObjectPath:
        return self

    def absolute(self) -> ObjectPath:
        return self

    def exists(self, *, follow_symlinks: bool = True) -> bool:
        fs, key = _filesystem(str(self))
        return bool(fs.exists(key))

    def is_file(self) -> bool:
        fs, key = _filesystem(str(self))
        return bool(fs.isfile(key))

    def is_dir(self) -> bool:
        fs, key = _filesystem(str(self))
        return bool(fs.isdir(key))

    def iterdir(self) -> Generator[ObjectPath, None, None]:
        """The entries of a folder; nothing for a missing one on an object store, where a folder exists
        only while a file is in it (``mkdir`` makes nothing there)."""
        fs, key = _filesystem(str(self))
        try:
            children = fs.ls(key, detail=False)
        except FileNotFoundError:
            if not _object_store(fs):
                raise
            children = []
        for child in sorted(children):
            if child.rstrip("/") != key.rstrip("/"):
                yield self._child(child)

    def glob(self, pattern: str) -> Generator[ObjectPath, None, None]:
        fs, key = _filesystem(str(self))
        for match in sorted(fs.glob(f"{key.rstrip('/')}/{pattern}")):
            yield self._child(match)

    def rglob(self, pattern: str) -> Generator[ObjectPath, None, None]:
        """Files (object stores have no empty folders) under this prefix whose name matches ``pattern``."""
        import fnmatch

        fs, key = _filesystem(str(self))
        for match in sorted(fs.find(key)):
            if fnmatch.fnmatch(match.rsplit("/", 1)[-1], pattern):
                yield self._child(match)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        """Size and modification time (``st_mtime_ns``, to the store's precision) of a file."""
        fs, key = _filesystem(str(self))
        info = fs.info(key)
        mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
        seconds = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0)
        return os.stat_result(
            (0o100644, 0, 0, 1, 0, 0, int(info.get("size") or 0), seconds, seconds, seconds),
            {"st_mtime_ns": int(seconds * 1e9)},
        )

    def open(  # type: ignore[override]
        self,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        fs, key = _filesystem(str(self))
        if "b" in mode:
            return fs.open(key, mode)
        raw = fs.open(key, mode.replace("t", "") + "b")
        return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors, newline=newline)

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing on an object store (a folder exists once a file is in it); a folder elsewhere."""
        fs, key = _filesystem(str(self))
        fs.makedirs(key, exist_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        fs, key = _filesystem(str(self))
        try:
            fs.rm_file(key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def etag(self) -> str:
        """The store's content tag of a file (S3/GCS ETag), or "" where there is none."""
        fs, key = _filesystem(str(self))
        info = fs.info(key)
        return str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or "").strip('"')


def rmtree(path: Path, ignore_errors: bool = False) -> None:
    """Remove a folder and everything in it (``shutil.rmtree``; a prefix on an object store)."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    assert isinstance(path, ObjectPath)
    fs, key = _filesystem(str(path))
    try:
        if fs.exists(key):
            fs.rm(key, recursive=True)
    except OSError:
        if not ignore_errors:
            raise


def _object_store(fs: Any) -> bool:
    protocols = [fs.protocol] if isinstance(fs.protocol, str) else list(fs.protocol)
    return bool(OBJECT_STORES & set(protocols))


def write_bytes_atomic(data: bytes, path: ObjectPath) -> None:
    """Write a remote file so that readers see the old content or the new one, never a part: one upload on
    an object store; elsewhere (HDFS) a temporary name, then a move."""
    fs, key = _filesystem(str(path))
    if _object_store(fs):
        fs.pipe_file(key, data)
        return
    tmp = f"{key.rsplit('/', 1)[0]}/.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, key)
    finally:
        if fs.exists(tmp):
            fs.rm_file(tmp)


def upload_file(local: Path, remote: ObjectPath) -> None:
    """Upload a local file (streamed), atomically as :func:`write_bytes_atomic` writes."""
    fs, key = _filesystem(str(remote))
    if _object_store(fs):
        fs.put_file(str(local), key)
        return
    tmp = f"{key.rsplit('/', 1)[0]}/.{remote.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fs.put_file(str(local), tmp)
    try:
        fs.mv(tmp, key)
    finally:
        if fs.exists(tmp):
            fs.rm_file(tmp)


def copy_file(src: Path, dst: Path) -> None:
    """Copy one file between any two locations (a server-side copy within one remote file system)."""
    if is_remote(src) and is_remote(dst) and str(src).split("://")[0] == str(dst).split("://")[0]:
        assert isinstance(src, ObjectPath) and isinstance(dst, ObjectPath)
        fs, key = _filesystem(str(src))
        fs.copy(key, dst.key)
    elif is_remote(dst) and not is_remote(src):
        assert isinstance(dst, ObjectPath)
        upload_file(src, dst)
    elif is_remote(dst):
        assert isinstance(dst, ObjectPath)
        write_bytes_atomic(src.read_bytes(), dst)
    else:
        dst.write_bytes(src.read_bytes())


def upload_tree(local: Path, remote: Path, last: str = "") -> None:
    """Copy every file under the local folder ``local`` to ``remote`` (same relative paths); the file named
    ``last`` (a commit marker) goes after all the others."""
    files = sorted(f for f in local.rglob("*") if f.is_file())
    files.sort(key=lambda f: f.relative_to(local).as_posix() == last)
    for f in files:
        copy_file(f, remote / f.relative_to(local).as_posix())


def cache_dir(*parts: str) -> Path:
    """A local cache folder: ``$CROSSRANK_CACHE`` (default ``~/.cache/crossrank``) / parts, created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "crossrank")
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_key(location: object) -> str:
    """A short stable folder name for ``location`` in a cache."""
    return hashlib.sha256(str(location).encode()).hexdigest()[:16]
