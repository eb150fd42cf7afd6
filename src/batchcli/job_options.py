"""The options of a `run` as its job record keeps them, and what a `--resume` takes from them.

Options are kept as the command line spells them, `{"--max-tokens": 64, "--seed": 3}`: only those set
to other than their default, and none that belong to one invocation (output, --resume, --quiet, ...).
Invariant: a resume runs with the job's options unless it names one itself; naming one that decides the
answers (ANSWER_FLAGS) with another value than the job's is refused, naming the flag and both values,
since the finished records would then answer another job.
"""

from __future__ import annotations

from pathlib import Path

from batchcli.errors import OutputMismatchError
from batchcli.formats.fields import show

SAMPLING_FLAGS = frozenset({
    "--max-tokens", "--temperature", "--top-p", "--top-k", "--min-p", "--seed", "--stop", "--stop-token-id", "--n",
    "--min-tokens", "--presence-penalty", "--frequency-penalty", "--repetition-penalty", "--logprobs", "--ignore-eos",
})
# What the answers (or where they go) depend on; the engine settings (--admission, --dtype, ...) may change.
ANSWER_FLAGS = SAMPLING_FLAGS | {"--model", "--served-model-name", "--errors", "--input-format", "--system"}


def resume_options(recorded: dict[str, object], given: dict[str, object], record: Path) -> dict[str, object]:
    """The recorded options a resume takes: those it does not give itself (`given`: flag -> value, as
    recorded). Raises OutputMismatchError for an answer flag given otherwise than the job ran."""
    for flag in sorted(ANSWER_FLAGS & given.keys()):
        if recorded.get(flag) != given[flag]:
            was = f"the job ran with {flag} {show(recorded[flag])}" if flag in recorded else f"the job ran without {flag}"
            raise OutputMismatchError(
                f"--resume with {flag} {show(given[flag])}, but {was} (job record {record.name}); leave {flag} out "
                "to finish the job with its own options, or start over with --overwrite")
    return {flag: value for flag, value in recorded.items() if flag not in given}
