"""What ties an output file to its job: the job record beside it, and the output-is-the-input check.

Invariant: an output file with records in it is resumed only by the job that wrote them. The job
record `OUT.job.json` holds the job's identity (a hash of every line's number, id, outcome, sampling
parameters and prompt tokens, and the model), written atomically before the first record; a resume
whose identity differs, or that finds records but no job record, is refused.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import orjson

from batchcli.errors import OutputError, OutputMismatchError, SameFileError

_VERSION = 1


def job_record_path(output: Path) -> Path:
    return output.with_name(output.name + ".job.json")


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


def bind_output(output: Path, identity: str, *, resumed: bool, source: str) -> None:
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
            raise OutputMismatchError(f"output {str(output)!r} was written for another input, other options or "
                                      f"another model (job record {record.name}); {start_over}")
        return
    data = orjson.dumps({"version": _VERSION, "input": source, "identity": identity}, option=orjson.OPT_APPEND_NEWLINE)
    tmp = record.with_name(record.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
    except OSError as exc:
        raise OutputError(f"cannot write job record {str(record)!r}: {exc.strerror}") from None
