"""keep_freed_memory raises glibc's thresholds for real (this suite runs on glibc Linux); the engine's
step loop runs with the objects made before it frozen out of the collector, and hands them back."""

from __future__ import annotations

import gc
import platform

import pytest

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.engine.host_memory import keep_freed_memory, setup_frozen
from batchcli.params import SamplingParams
from helpers_models import save_tiny_checkpoint
from test_engine import make_job, shared_prompts


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_both_thresholds():
    assert keep_freed_memory() is True


def test_setup_frozen_freezes_what_exists_and_releases_it_even_on_error():
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), setup_frozen():
        assert gc.get_freeze_count() > 1000  # the interpreter, pytest, torch: far more than a handful
        raise RuntimeError("a failing step")
    assert gc.get_freeze_count() == 0


def test_engine_steps_run_frozen_and_leave_nothing_frozen(tmp_path):
    save_tiny_checkpoint(tmp_path, "llama", seed=3, eos_token_id=2)
    job = make_job(shared_prompts(), [SamplingParams(max_tokens=3)] * len(shared_prompts()), "multi")
    engine = Engine(tmp_path, EngineConfig(dtype="float32", attention="torch"), decode=lambda ids: "",
                    work_tokens=job.shard().work_tokens, block_size=job.plan.settings.block_size)
    frozen_during_steps = []

    class Never:
        requested = False

    engine.run(job.shard(), lambda e: None, lambda p: frozen_during_steps.append(gc.get_freeze_count()), Never())
    assert frozen_during_steps and min(frozen_during_steps) > 1000
    assert gc.get_freeze_count() == 0
