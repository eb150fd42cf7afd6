"""Where a run's records go: error lines to the `--errors` file when there is one, the rest to the output.

Invariant: every record goes to exactly one of the two writers; the counts, error codes and first failed
requests cover both, so the end-of-run summary speaks for the whole job's records of this run.
"""

from __future__ import annotations

from batchcli.io.writer import Answered, OutputWriter, WriteCounts

FIRST_FAILED = 5  # failed requests the summary names


class Sinks:
    def __init__(self, output: OutputWriter, errors: OutputWriter | None) -> None:
        self.output, self.errors = output, errors
        self.first_failed: list[tuple[str, str]] = []  # (the id a user knows it by, error code), in write order

    def write(self, record: dict, key: int) -> None:
        error = record.get("error")
        if error is not None and len(self.first_failed) < FIRST_FAILED:
            self.first_failed.append((str(record.get("custom_id") or record.get("id")), str(error.get("code"))))
        if self.errors is not None and error is not None:
            self.errors.write(record)
        else:
            self.output.write(record, key=key)

    @property
    def counts(self) -> WriteCounts:
        a, b = self.output.counts, (self.errors.counts if self.errors is not None else WriteCounts(0, 0))
        return WriteCounts(a.successes + b.successes, a.errors + b.errors)

    @property
    def error_codes(self) -> dict[str, int]:
        codes = dict(self.output.error_codes)
        for code, n in (self.errors.error_codes.items() if self.errors is not None else ()):
            codes[code] = codes.get(code, 0) + n
        return dict(sorted(codes.items(), key=lambda item: (-item[1], item[0])))

    def answered(self) -> Answered:
        """What the output and the errors file already answer (--resume)."""
        a = self.output.answered()
        if self.errors is None:
            return a
        b = self.errors.answered()
        return Answered(a.ids | b.ids, a.lines | b.lines)
