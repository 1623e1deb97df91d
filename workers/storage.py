"""Where a sweep keeps its files: a folder (local, or one every Ray node mounts) or object
storage (``s3://bucket/prefix``, ``gs://bucket/prefix``, any URI pyarrow's file systems take).

Ray Tune writes its experiment state and the trials' checkpoints there itself. Podium reads and
writes the rest through this module, with the same pyarrow file systems Tune uses: the sweep's
ledger, ``--resume``'s checks, the winner's checkpoint for promotion, registry teachers. A
location is a plain string (a folder's path or a URI), so it travels in MLflow tags and in the
ledger unchanged.

Object storage has no append and no rename, but a single object appears whole or not at all:
what must survive a kill is written as one object (:func:`write_text`).

S3's endpoint and credentials come from the standard variables, which pyarrow reads itself
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``):
so MinIO or any S3-compatible server works. Every Ray node needs them.

Example:
    >>> write_text(join("s3://runs/podium", "x.json"), "{}")   # doctest: +SKIP
    >>> names("s3://runs/podium")                               # doctest: +SKIP
    ['x.json']
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyarrow.fs import FileSystemHandler, FileType  # pyarrow comes with Ray

# URI scheme -> the type name of the pyarrow file system that serves it.
SCHEMES = {
    "s3": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "hdfs": "hdfs",
    "viewfs": "hdfs",
    "abfs": "abfs",
    "abfss": "abfs",
}
TUNE_MARKER = ".validate_storage_marker"  # Tune's proof that a node sees the sweep's storage
# The other way: how a file system's paths are written back as URIs.
_SCHEME_OF_TYPE = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def location_problem(value: str) -> str | None:
    """Why ``value`` cannot be a sweep's storage location, or None (no I/O: a spec check)."""
    if not is_uri(value):
        return None
    parts = urlsplit(value)
    if parts.scheme not in SCHEMES:
        return (
            f"scheme {parts.scheme!r} is not one of: {', '.join(sorted(SCHEMES))} "
            "(or give a folder)"
        )
    if not parts.netloc:
        return f"names no bucket: {value!r} (write {parts.scheme}://BUCKET/PREFIX)"
    if parts.query or parts.fragment:
        # Podium joins paths onto the location; options belong in the standard variables.
        return (
            f"takes no query options: {value!r}; the S3 endpoint and keys come from "
            "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return None


def normalise(location: str | os.PathLike) -> str:
    """A folder as an absolute path; a URI without its trailing slash."""
    text = str(location)
    return text.rstrip("/") if is_uri(text) else str(Path(text).resolve())


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return posixpath.join(location.rstrip("/"), *parts)
    return os.path.join(location, *parts)


def split(location: str) -> tuple[str, str]:
    """(parent location, last name): what Tune's ``storage_path`` and ``name`` take."""
    if is_uri(location):
        head, _, name = location.rstrip("/").rpartition("/")
        return head, name
    path = Path(location)
    return str(path.parent), path.name


# A checkpoint is a handful of small files, and object storage makes each a few requests more
# than it needs, which on S3 cost more than the bytes:
# - opened at once, an object is a multipart upload (create, part, complete); opened lazily, one
#   smaller than a part is one PUT when it is closed (errors then surface at close, which a copy
#   does before Tune reports the checkpoint saved);
# - pyarrow writes an empty "folder/" marker object for every level of every folder it is asked
#   to create, and a copy asks once per file; S3 has no folders (a prefix with objects under it
#   lists as one), so the file system below skips them.
# Tune's own upload of a 5-file checkpoint to moto's S3 here: 20 requests and 149 ms as pyarrow
# opens it, 10 and 60 ms opened lazily, 5 and 28-49 ms without the markers too.
_QUERY = {"s3": "allow_delayed_open=true"}


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow file system, path inside it) for ``location``."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    parts = urlsplit(location)
    if parts.scheme in _BUCKET_PATHS:
        # Building an S3 file system builds a client: 13 ms here, for every ledger record,
        # snapshot and read. One per bucket and settings, as for what Tune unpickles below.
        fs = _bucket_filesystem(parts.scheme, parts.netloc, _settings())
        return fs, f"{parts.netloc}{parts.path}".rstrip("/")
    return _new_filesystem(location)


# Schemes whose file systems name a path "bucket/key", as pyarrow's from_uri gives it.
_BUCKET_PATHS = {"s3", "gs", "gcs"}


def _new_filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    query = _QUERY.get(urlsplit(location).scheme)
    fs, path = pafs.FileSystem.from_uri(f"{location}?{query}" if query else location)
    if fs.type_name == "s3":
        fs = pafs.PyFileSystem(_NoFolderMarkers(fs))
    return fs, path


def _settings() -> tuple[str | None, ...]:
    """The standard variables that say which server and keys a client uses (pyarrow and boto3
    read them at a client's start): a client is reused only while they are the same."""
    return tuple(os.environ.get(n) for n in _SETTINGS)


_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
)


@functools.lru_cache(maxsize=16)
def _bucket_filesystem(scheme: str, bucket: str, settings: tuple[str | None, ...]) -> Any:
    return _new_filesystem(f"{scheme}://{bucket}")[0]


class _NoFolderMarkers(FileSystemHandler):  # type: ignore[misc]
    """An S3 file system that creates no folder markers (see above); everything else as the
    file system it wraps. Picklable, as Tune sends its storage to every trial process.

    Tune copies into it with threads: its single-threaded copy applies to pyarrow's own S3 class
    only, a workaround for a copy deadlock that Arrow fixed in version 19 (apache/arrow#44897;
    the pinned pyarrow is 25)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self._markers: dict[str, Any] = {}  # Tune's storage markers seen, by path (see below)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Tune pickles the file system into every result that carries a checkpoint, and a new S3
        # client per unpickling cost the driver 18.6 ms a report (5 s of the anchor's 16-trial
        # sweep, profiled): one client per process and set of options instead.
        return _shared_handler, (pickle.dumps(self.fs),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NoFolderMarkers) and self.fs.equals(other.fs)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return self.fs.type_name

    def create_dir(self, path: str, recursive: bool) -> None:
        pass  # a prefix exists once an object is under it

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[Any]:
        # Tune checks that its storage marker exists before every checkpoint it uploads (Ray
        # 2.58's persist_current_checkpoint): one request per checkpoint, 160 in the anchor
        # sweep. Tune writes the marker once, when the sweep starts, and never removes it; so
        # once this process has seen it, it does not ask again.
        if len(paths) == 1 and paths[0] in self._markers:
            return [self._markers[paths[0]]]
        infos = self.fs.get_file_info(paths)
        for info in infos:
            if info.base_name == TUNE_MARKER and info.type == FileType.File:
                self._markers[info.path] = info
        return infos

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        return self.fs.get_file_info(selector)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_append_stream(path, metadata=metadata)


def for_tune(location: str) -> tuple[str, Any]:
    """(path, file system) to give Tune for ``location`` (``RunConfig``'s ``storage_path`` and
    ``storage_filesystem``, ``Tuner.restore``'s ``path`` and ``storage_filesystem``): a folder as
    it is, with Tune's own file system; a URI with this module's, so Tune's uploads (state,
    checkpoints) are written as Podium's are."""
    if not is_uri(location):
        return location, None
    fs, path = filesystem(location)
    return path, fs


def location_of(fs: Any, path: str) -> str:
    """A location string for ``path`` in ``fs``: how Tune's checkpoints (a file system and a
    path) are recorded in the ledger."""
    scheme = _SCHEME_OF_TYPE.get(fs.type_name.removeprefix("py::"))  # py::s3: _NoFolderMarkers
    return f"{scheme}://{path.lstrip('/')}" if scheme else path


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def names(location: str) -> list[str]:
    """The names directly inside ``location``, sorted ([] if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def size(location: str) -> int | None:
    """Bytes of the file at ``location``; None if there is none."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_text(location: str, text: str) -> None:
    """Write ``location`` whole (see :func:`write_bytes`)."""
    write_bytes(location, text.encode("utf-8"))


def write_bytes(location: str, data: bytes) -> None:
    """Write ``location`` whole: an object store shows a new object only once its upload
    completes; a folder gets a temporary file renamed over it."""
    if is_uri(location):
        fs, path = filesystem(location)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def upload(folder: str | os.PathLike, location: str) -> None:
    """Copy a local folder's files to ``location``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    pafs.copy_files(str(Path(folder).resolve()), path, pafs.LocalFileSystem(), fs)


def download(location: str, folder: str | os.PathLike) -> Path:
    """Copy the folder at ``location`` into the local ``folder``; returns ``folder``.

    Raises:
        FileNotFoundError: nothing is at ``location``.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {location}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(Path(folder).resolve()), fs, pafs.LocalFileSystem())
    return Path(folder)


def delete_folders(fs: Any, paths: list[str]) -> None:
    """Delete the folders at ``paths`` in the pyarrow file system ``fs`` (as Tune names its
    checkpoints), with everything in them; a path with nothing there is skipped.

    pyarrow deletes an S3 folder with three requests (a listing, a batch delete, and an empty
    marker object it writes for the parent folder), and offers no batch across folders. Where
    :func:`deletes_in_batches`, S3 folders go together: one listing per parent folder and one
    request per 1,000 objects. Tune's superseded checkpoints of one save, 128 in the anchor
    sweep, were 384 requests; they are 16 listings (one per trial) and one delete.
    """
    client = _s3_client() if _is_s3(fs) else None
    if client is None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(path)
        return
    wanted: dict[tuple[str, str], list[str]] = {}  # (bucket, parent prefix) -> folder keys
    for path in paths:
        bucket, _, key = path.strip("/").partition("/")
        wanted.setdefault((bucket, posixpath.dirname(key)), []).append(key)
    doomed: dict[str, list[str]] = {}  # bucket -> the keys of those folders' objects
    for (bucket, parent), folders in wanted.items():
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{parent}/" if parent else ""
        )
        doomed.setdefault(bucket, []).extend(
            o["Key"]
            for page in pages
            for o in page.get("Contents", [])
            if any(o["Key"] == f or o["Key"].startswith(f"{f}/") for f in folders)
        )
    for bucket, keys in doomed.items():
        for start in range(0, len(keys), 1000):  # S3's most per request
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            answer = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"s3://{bucket}/{first['Key']}: {first['Code']} {first['Message']}")


def deletes_in_batches(fs: Any) -> bool:
    """Whether :func:`delete_folders` deletes ``fs``'s folders together (S3, with boto3)."""
    return _is_s3(fs) and _s3_client() is not None


def _is_s3(fs: Any) -> bool:
    return fs.type_name.removeprefix("py::") == "s3"  # py::s3: _NoFolderMarkers


def _s3_client() -> Any:
    try:
        import boto3  # noqa: F401 (optional: without it, folders are deleted one at a time)
    except ImportError:
        return None
    return _s3_client_for(_settings())


@functools.lru_cache(maxsize=4)
def _s3_client_for(settings: tuple[str | None, ...]) -> Any:
    import boto3

    return boto3.session.Session().client("s3")  # thread-safe, unlike the session


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """The folder at ``location`` as a local folder: itself, or a temporary download of it
    (removed afterwards)."""
    if not is_uri(location):
        yield Path(location)
        return
    tmp = tempfile.mkdtemp(prefix="podium-copy-")
    try:
        yield download(location, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=16)
def _shared_handler(fs_pickle: bytes) -> _NoFolderMarkers:
    return _NoFolderMarkers(pickle.loads(fs_pickle))  # bytes this module pickled


__all__ = [
    "SCHEMES",
    "delete_folders",
    "deletes_in_batches",
    "download",
    "exists",
    "filesystem",
    "for_tune",
    "is_uri",
    "join",
    "local_copy",
    "location_of",
    "location_problem",
    "names",
    "normalise",
    "read_bytes",
    "read_text",
    "size",
    "split",
    "upload",
    "write_bytes",
    "write_text",
]
