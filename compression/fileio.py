"""Files that readers must never see half-written: model files, checkpoints, exports, cache records."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    The temporary name is unique, so two processes writing the same path at once each rename a whole file
    and a reader sees one of them, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file is shared like any other output
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))


def torch_save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save through atomic_write, giving the same bytes wherever the temporary file is.

    torch.save names the records inside its zip archive after the file it writes (`m.pt.tmp` holds
    `m.pt/data.pkl`), so a uniquely named temporary file would make every write of the same object differ.
    The object is saved as `<name>.tmp` in a private directory and moved into atomic_write's file.
    """
    import torch

    path = Path(path)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=tmp.name + ".") as staging:
            staged = Path(staging) / f"{path.name}.tmp"
            torch.save(obj, staged)
            os.replace(staged, tmp)

    atomic_write(path, write)
