"""The checkpoint file beside an output: in-flight samples of a job, so a kill loses bounded work.

Invariants: `OUT.ckpt.json` is replaced atomically (a kill leaves the old one or the new one, whole);
it carries the job identity and is used only by a resume of that job; it is read as untrusted: a
request id, sample index, token id or RNG state that does not fit this job refuses the whole file.
Requests the output already answers are ignored, so it may lag behind the output by one interval.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable

import orjson

from batchcli.engine.resume import RNG_STATE_SIZES, InFlight, SampleState
from batchcli.errors import CheckpointFileError
from batchcli.requests import Request

_VERSION = 1



def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".ckpt.json")


def save_checkpoint(path: Path, identity: str, requests: list[Request], in_flight: list[InFlight]) -> None:
    """Write the in-flight samples (request indices into `requests`) atomically; nothing in flight: remove."""
    if not in_flight:
        path.unlink(missing_ok=True)
        return
    doc = {"version": _VERSION, "identity": identity, "requests": {
        requests[f.request].id: [[s.sample, list(s.generated), s.finished,
                                  None if s.rng_state is None else base64.b64encode(s.rng_state).decode()]
                                 for s in f.samples] for f in in_flight}}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointFileError(f"cannot write checkpoint {str(path)!r}: {exc.strerror or exc}") from None


def load_checkpoint(path: Path, identity: str, requests: list[Request], vocab_size: int,
                    log: Callable[[str], None]) -> dict[int, tuple[SampleState, ...]]:
    """The restored samples by index into `requests` (the requests still to run); {} without a file,
    or for another job's (a leftover that holds nothing of this one)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise _damaged(path, str(exc)) from None
    if type(doc) is not dict or doc.get("version") != _VERSION or type(doc.get("requests")) is not dict:
        raise _damaged(path, "not a checkpoint of this version")
    if doc.get("identity") != identity:
        log(f"batchllm: ignoring checkpoint {path.name}: it was written for another job")
        return {}
    index = {r.id: i for i, r in enumerate(requests)}
    restored = {}
    for rid, samples in doc["requests"].items():
        if rid in index:  # else answered in the output since the checkpoint was taken
            restored[index[rid]] = _samples(path, requests[index[rid]], samples, vocab_size)
    return restored


def _sample(path: Path, request: Request, raw: object, vocab_size: int) -> SampleState:
    if type(raw) is not list or len(raw) != 4:
        raise _damaged(path, f"request {request.id!r}: a sample must be [index, tokens, finished, rng]")
    sample, tokens, finished, rng = raw
    p = request.params
    if type(sample) is not int or not 0 <= sample < p.n or type(finished) is not bool:
        raise _damaged(path, f"request {request.id!r}: bad sample index {sample!r} or finished flag")
    if (type(tokens) is not list or not 0 < len(tokens) <= p.max_tokens
            or not all(type(t) is int and 0 <= t < vocab_size for t in tokens)):
        raise _damaged(path, f"request {request.id!r} sample {sample}: generated tokens do not fit the request")
    try:
        state = None if rng is None else base64.b64decode(rng, validate=True)
    except (TypeError, ValueError):
        state = b""
    if state is not None and len(state) not in RNG_STATE_SIZES:
        raise _damaged(path, f"request {request.id!r} sample {sample}: bad RNG state")
    return SampleState(sample, tuple(tokens), finished, state)


def _samples(path: Path, request: Request, value: object, vocab_size: int) -> tuple[SampleState, ...]:
    if type(value) is not list:
        raise _damaged(path, f"request {request.id!r}: samples must be a list")
    samples = tuple(_sample(path, request, s, vocab_size) for s in value)
    if len({s.sample for s in samples}) != len(samples):
        raise _damaged(path, f"request {request.id!r}: a sample appears twice")
    return samples


def _damaged(path: Path, why: str) -> CheckpointFileError:
    return CheckpointFileError(f"checkpoint {str(path)!r} cannot be used ({why}); delete it to resume without it "
                               "(its in-flight requests are then redone from the start)")

