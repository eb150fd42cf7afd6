"""What ties an output file to its job: the job record beside it, and the output-is-the-input check.

Invariant: an output file with records in it is resumed only by the job that wrote them. The job
record `OUT.job.json` holds the job's identity (a hash of every line's number, id, outcome, sampling
parameters and prompt tokens, and the model), written atomically before the first record, with what a
person (or `--resume`) needs to know the job by: its input, model and options (job_options); a resume
whose identity differs, or that finds records but no job record, is refused.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import orjson

from batchcli.errors import OutputError, OutputMismatchError, SameFileError, UsageError

_VERSION = 1


def job_record_path(output: Path) -> Path:
    return output.with_name(output.name + ".job.json")


def default_output(source: str) -> str:
    """The output of a run without -o: stdout for stdin, else INPUT with `.out.jsonl`. Refused for an
    input that is no regular file (`<(...)`, a FIFO, /dev/stdin), whose name says nothing to write beside."""
    if source == "-":
        return "-"
    try:
        regular = stat.S_ISREG(os.stat(source).st_mode)
    except OSError:  # missing: the input check says so
        regular = True
    if not regular:
        raise UsageError(f"input {source} is not a regular file, so no output name follows from it; "
                         "give -o FILE (or -o - for stdout)")
    return str(Path(source).with_suffix(".out.jsonl"))


def has_side_files(output: str) -> bool:
    """Whether `output` gets its lock, job record and checkpoint beside it: a regular file (or one to be
    created) does; stdout, a device (/dev/null) or a pipe does not, as nothing there can be resumed."""
    if output == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(output).st_mode)
    except OSError:  # not there yet: the run creates a regular file
        return True


def read_job_options(output: Path) -> dict[str, object] | None:
    """The options recorded in `output`'s job record; None when there is none (or it predates them)."""
    try:
        doc = orjson.loads(job_record_path(output).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None  # no record to take options from; bind_output judges the record itself
    options = doc.get("options") if type(doc) is dict else None
    return options if type(options) is dict else None


def refuse_output_is_input(source: str, output: str) -> None:
    """Refuse an output that is the input itself (also through a link, or stdin redirected from it)."""
    if output == "-":
        return
    try:
        out = os.stat(output)
        inp = os.fstat(sys.stdin.fileno()) if source == "-" else os.stat(source)
    except (OSError, ValueError):  # no output yet, or no stdin to compare: they cannot be one file
        return
    if stat.S_ISREG(out.st_mode) and (out.st_dev, out.st_ino) == (inp.st_dev, inp.st_ino):
        raise SameFileError(f"output {output!r} is the input file itself; choose another -o")


def bind_output(output: Path, identity: str, *, resumed: bool, source: str, model: str,
                options: dict[str, object]) -> None:
    """Check (`resumed`: the output already holds records) or write the job record of `output`."""
    record = job_record_path(output)
    start_over = "start over with --overwrite, or choose another -o"
    if resumed:
        try:
            doc = orjson.loads(record.read_bytes())
        except FileNotFoundError:
            raise OutputMismatchError(f"output {str(output)!r} has records but no job record {record.name}, so "
                                      f"it cannot be known to answer this input; {start_over}") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise OutputMismatchError(f"cannot read job record {str(record)!r} ({exc}); {start_over}") from None
        if type(doc) is not dict or doc.get("identity") != identity:
            raise OutputMismatchError(f"output {str(output)!r} {_other_job(doc, source, model)} (job record "
                                      f"{record.name}); {start_over}")
        return
    doc = {"version": _VERSION, "input": source, "model": model, "options": options, "identity": identity}
    data = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_INDENT_2)
    tmp = record.with_name(record.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
    except OSError as exc:
        raise OutputError(f"cannot write job record {str(record)!r}: {exc.strerror}") from None


def _other_job(doc: object, source: str, model: str) -> str:
    """Why a job record is another job's, as far as it tells: its model, else its input's lines."""
    if type(doc) is not dict or "options" not in doc:  # a record from before options were kept
        return ("was written for another input, other options or another model; to finish it, give the "
                "options of its first run with --resume")
    if doc.get("model") != model:
        return f"was written with model {doc.get('model')!r}, this run uses {model!r} (--model or $BATCHLLM_MODEL)"
    return (f"was written for other input lines (the job's input was {doc.get('input')!r}, this run reads "
            f"{source!r}, with the same options and model)")
