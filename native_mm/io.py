"""Small file helpers shared by every writer: atomic writes and content hashes.

Everything the project writes goes through :func:`atomic_write` (temporary file in the
same directory, fsync, rename), so a process killed mid-write never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success rename it over ``path``."""
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(
    path: str | Path,
    default_name: str,
    error: type[Exception] = ValueError,
    what: str = "JSON",
    hint: str = "",
) -> tuple[Any, Path]:
    """Read a JSON file (or ``default_name`` inside a directory) -> (object, file path).

    A missing or malformed file raises ``error`` naming the file and ``what`` it should
    be; ``hint`` is added to the missing-file message (e.g. which command makes it).
    """
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    try:
        return json.loads(path.read_text()), path
    except FileNotFoundError:
        raise error(f"{path}: no {what} there{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: {what} is not valid JSON ({e})") from None


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
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_bytes(path, data)
    return sha256_bytes(data)


def load_torch(path: str | Path, expected_sha256: str | None = None) -> Any:
    """Safe ``torch.load`` (``weights_only=True``) with an optional checksum check."""
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
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt/unsafe file
        raise ValueError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from None
