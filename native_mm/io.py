"""Small file helpers shared by every writer: atomic writes and content hashes.

Everything the project writes goes through :func:`atomic_write` (temporary file in the
same directory, fsync, rename), so a process killed mid-write never leaves a
half-written file under the final name (JSON, images, figures and WAVs have their own
small wrappers here). Checkpoints (Lightning ``.ckpt`` files and the plain inference
file) and results read back later (``eval.json``) also get a checksum beside them,
``NAME.sha256.json`` (:func:`write_checked`), which :func:`load_torch` and
``read_json(..., verify=True)`` check before using the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", size: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success rename it over ``path``.

    A full disk is an :class:`OSError` naming ``path``, the free space and, given ``size``
    (the bytes to write), what was needed; the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, size, e) from None
        raise


def _no_space(path: Path, size: int | None, e: OSError) -> OSError:
    """ENOSPC with the file, the free space and the bytes needed (when known)."""
    import shutil

    free = shutil.disk_usage(path.parent).free
    need = f"; it needs {size:,} bytes" if size is not None else ""
    what = "quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
    return OSError(e.errno, f"{path}: {what} ({free:,} bytes free there{need})")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb", size=len(data)) as f:
        f.write(data)


def write_json(path: str | Path, obj: Any, checksum: bool = False) -> None:
    """Write ``obj`` as indented JSON; with ``checksum`` also ``NAME.sha256.json`` beside it
    (:func:`write_checked`), which ``read_json(..., verify=True)`` checks."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if checksum:
        write_checked(path, text.encode())
        return
    with atomic_write(path, "w") as f:
        f.write(text)


def save_image(path: str | Path, image: Any) -> None:
    """Save a PIL image atomically (the format follows the suffix, PNG by default)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_write(path, "wb") as f:
        image.save(f, format=fmt)


def save_figure(path: str | Path, fig: Any, **kwargs: Any) -> None:
    """``fig.savefig`` (matplotlib) atomically, as PNG."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)


def write_wav(path: str | Path, samples: Any, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a WAV atomically; ``samples`` as ``soundfile.write`` takes them ((T,) or (T, C))."""
    import soundfile as sf

    with atomic_write(path, "wb") as f:
        sf.write(f, samples, sample_rate, subtype=subtype, format="WAV")


def remove_temp_files(*dirs: str | Path, name: str = "") -> None:
    """Delete the temp files a killed process left in ``dirs`` (:func:`atomic_write`'s
    ``.NAME.*.tmp``; only those of files whose name starts with ``name`` when given);
    other files, even ones ending in ``.tmp``, are left alone."""
    for d in map(Path, dirs):
        for p in d.glob(f".{name}*.tmp") if d.is_dir() else ():
            p.unlink(missing_ok=True)


def read_json(
    path: str | Path,
    default_name: str,
    error: type[Exception] = ValueError,
    what: str = "JSON",
    hint: str = "",
    verify: bool = False,
) -> tuple[Any, Path]:
    """Read a JSON file (or ``default_name`` inside a directory) -> (object, file path).

    A missing or malformed file raises ``error`` naming the file and ``what`` it should
    be; ``hint`` is added to the missing-file message (e.g. which command makes it).
    With ``verify``, the file is first checked against its ``NAME.sha256.json`` when it
    has one (``write_json(..., checksum=True)``); a mismatch raises ``error`` too.
    """
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    try:
        data = path.read_bytes()
        if verify:
            again = "delete it and run the step that wrote it again"
            verify_checked(path, sha256_bytes(data), what=what, hint=again)
        return json.loads(data.decode()), path
    except FileNotFoundError:
        raise error(f"{path}: no {what} there{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: {what} is not valid JSON ({e})") from None
    except ValueError as e:  # the checksum did not match
        raise error(str(e)) from None


def read_yaml(path: str | Path, error: type[Exception] = ValueError, what: str = "YAML") -> Any:
    """Read a YAML file (empty file -> ``{}``); a missing or invalid file raises ``error``."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{path}: invalid YAML ({e})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_torch(path: str | Path, obj: Any) -> str:
    """``torch.save`` atomically; returns the file's sha256."""
    data = torch_bytes(obj)
    write_bytes(path, data)
    return sha256_bytes(data)


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` with every string interned first, so equal content gives
    equal bytes (pickle shares one memo entry per string *object*: a resumed run's unpickled
    keys would otherwise pickle differently from the literals of an uninterrupted run)."""
    import torch

    buf = io.BytesIO()
    torch.save(_interned(obj), buf)
    return buf.getvalue()


def _interned(obj: Any) -> Any:
    if isinstance(obj, str):
        return sys.intern(obj) if type(obj) is str else obj
    if type(obj) is dict:
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


# ---- checksummed checkpoints -------------------------------------------------------------
def checksum_path(path: str | Path) -> Path:
    """Where the checksum of a checkpoint lives: ``NAME.sha256.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256.json")


def write_checked(path: str | Path, data: bytes) -> str:
    """Write ``data`` atomically with its sha256 beside it; returns the sha256.

    The checksum file is written first and also records the sha256 of the file being
    replaced, so a kill between the two renames leaves the old file still verifiable
    (it matches ``previous_sha256``) rather than looking corrupt.
    """
    path = Path(path)
    # A write killed earlier left its temp files (a checkpoint's size each): drop them.
    remove_temp_files(path.parent, name=path.name)
    digest = sha256_bytes(data)
    previous = sha256_file(path) if path.is_file() else None
    sums = checksum_path(path)
    before = sums.read_bytes() if sums.is_file() else None
    write_json(
        sums, {"file": path.name, "sha256": digest, "bytes": len(data), "previous_sha256": previous}
    )
    try:
        write_bytes(path, data)
    except OSError:  # e.g. a full disk: no checksum file may describe a file never written
        if before is None:
            sums.unlink(missing_ok=True)
        else:
            with contextlib.suppress(OSError):
                write_bytes(sums, before)
        raise
    return digest


def verify_checked(
    path: str | Path,
    digest: str | None = None,
    what: str = "checkpoint",
    hint: str = "resume from another checkpoint or delete it",
) -> bool:
    """Check ``path`` against its ``NAME.sha256.json``; False when there is none.

    ``what`` names the kind of file in the messages, ``hint`` says what to do about it.

    Raises:
        ValueError: the file does not match its checksum (truncated, altered or
            replaced after it was written), or the checksum file is unreadable.
    """
    path = Path(path)
    side = checksum_path(path)
    if not side.is_file():
        return False
    meta, _ = read_json(side, side.name, what=f"{what} checksum")
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ValueError(f"{side}: malformed {what} checksum file (no sha256)")
    digest = digest or sha256_file(path)
    if digest not in (meta["sha256"], meta.get("previous_sha256")):
        raise ValueError(
            f"{path}: corrupted {what} (sha256 {digest[:16]}... does not match "
            f"{meta['sha256'][:16]}... recorded in {side.name}); the file was truncated or "
            f"altered after it was written: {hint}"
        )
    return True


def remove_checked(path: str | Path) -> None:
    """Delete a checkpoint and its checksum file (missing files are fine)."""
    for p in (Path(path), checksum_path(path)):
        p.unlink(missing_ok=True)


def load_torch(
    path: str | Path, expected_sha256: str | None = None, map_location: Any = "cpu"
) -> Any:
    """Safe ``torch.load`` (``weights_only=True``) after checking the file's checksum.

    The checksum is ``expected_sha256`` when given (e.g. from a tokenizer's config.json),
    else the ``NAME.sha256.json`` beside the file when there is one.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise ValueError(
            f"{path}: checksum mismatch (expected sha256 {expected_sha256}, "
            f"got {sha256_bytes(data)}); the file is corrupt or was replaced"
        )
    if expected_sha256 is None:
        verify_checked(path, sha256_bytes(data))
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt/unsafe file
        raise ValueError(f"{path}: cannot load checkpoint ({_load_failure(e)})") from None


def _load_failure(e: Exception) -> str:
    """torch.load's error in one line (its messages run over several)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
        return "not tensors and plain data only: refused, since unpickling it could run code"
    first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(e).__name__}: {first[:200]}"


class LockedError(ValueError):
    """Another process is writing the directory."""


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` while writing it (``name`` inside, with the
    holder's pid). ``fcntl.flock`` is released by the kernel when the holder dies, so a
    killed run never blocks the next one; the file is removed when the holder finishes.
    Writers of disjoint parts of one directory each lock their own ``name``.

    Raises:
        LockedError: another process holds it; the message names the directory and pid.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    f = open(path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise LockedError(
            f"{directory}: {holder} is writing here already; wait for it to finish or "
            "write to another directory"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{what} (pid {os.getpid()})")
    f.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()
