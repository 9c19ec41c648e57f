"""Reading ``.safetensors`` files with errors that name the file.

safetensors raises a bare ``SafetensorError("Error while deserializing header: ...")`` for a
truncated or damaged file, without saying which one; every place that loads exports, checkpoints,
rigs or caches goes through here instead, so the user learns which file to restore or re-create.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class CorruptFileError(ValueError):
    """A ``.safetensors`` file that cannot be read (truncated, damaged, not safetensors)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: cannot read ({reason}); the file is truncated or damaged — "
                         "restore it or re-create it")


def _reason(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


def _read_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # OSError: a file cut short mid-tensor can surface as a failed mmap/read
    return (SafetensorError, OSError, EOFError)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Missing file → ``FileNotFoundError``; a read error inside the block → ``CorruptFileError``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        yield
    except _read_errors() as e:
        raise CorruptFileError(path, _reason(e)) from None


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of ``path`` (``safetensors.torch.load_file``), or ``CorruptFileError``."""
    from safetensors.torch import load_file

    path = Path(path)
    with _reading(path):
        return load_file(str(path), device=str(device))


def load_tensors_and_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the header's string metadata of ``path``, or ``CorruptFileError``."""
    from safetensors import safe_open

    path = Path(path)
    with _reading(path), safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def load_saved_model(model: torch.nn.Module, path: str | Path) -> None:
    """Counterpart of ``safetensors.torch.save_model`` (handles tied weights), or ``CorruptFileError``."""
    from safetensors.torch import load_model

    path = Path(path)
    with _reading(path):
        load_model(model, str(path), device="cpu")
