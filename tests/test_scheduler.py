"""The plan-driven scheduler, driven by a fake engine that keeps a paged KV cache of token ids.

The fake engine writes every chunk's tokens into the cache slots its block ids name, then reads back
each chunk's whole context through its segment views and private blocks, and checks it is exactly the
prompt (+ generated tokens) up to that position. Its "model" samples a token from that context, so
any block mix-up, missing or repeated token changes the output; outputs are compared with a plain
loop over each sequence alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from batchcli.choices import parse_admission
from batchcli.engine.kv_pool import BlockPool
from batchcli.engine.policies import OutputEstimator, SchedulerConfig
from batchcli.engine.scheduler import Scheduler
from batchcli.engine.sequence import SeqStatus
from batchcli.engine.step import SegOwner, SeqOwner, StepBatch
from batchcli.errors import KVBudgetError
from batchcli.planning.plan import Plan, PlanSettings, PlanStats, Segment, build_plan
from batchcli.params import SamplingParams
from batchcli.planning.token_arrays import TokenArrays

BS = 4


def next_token(context: list[int], sample: int) -> int:
    return 100 + (sum((i + 1) * t for i, t in enumerate(context)) * 7 + sample) % 97


def make_plan(segments: list[tuple[int, int, int, int, int, int]], order: list[int], leaf: list[int]) -> Plan:
    """Segments as (parent, start, length, first, count, sequences)."""
    segs = tuple(Segment(i, *s) for i, s in enumerate(segments))
    stats = PlanStats(len(order), len(order), 0, 0, 0, 0.0, 0, 0.0, 0, 0)
    return Plan(1, "test", "fp", PlanSettings(block_size=BS), segs, tuple(order), tuple(leaf), stats)


@dataclass
class Job:
    """A workload: prompts, params, plan, and per-request output lengths (default max_tokens)."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    plan: Plan
    stop_len: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_len = self.stop_len or [p.max_tokens for p in self.params]

    def reference(self) -> dict[tuple[int, int], list[int]]:
        """(request, sample) -> generated tokens, one sequence at a time, no scheduler."""
        out = {}
        for r, prompt in enumerate(self.prompts):
            for j in range(self.params[r].n):
                ctx, gen = list(prompt), []
                while len(gen) < self.stop_len[r]:
                    gen.append(next_token(ctx, j))
                    ctx.append(gen[-1])
                out[r, j] = gen
        return out


@dataclass
class Trace:
    sched: Scheduler
    pool: BlockPool
    steps: list[StepBatch]
    finished_at: dict[int, int]  # seq id -> step index of its last token
    outputs: dict[tuple[int, int], list[int]]


class FakeEngine:
    def __init__(self, job: Job, sched: Scheduler) -> None:
        self.job, self.sched = job, sched
        self.num_seqs = sum(p.n for p in job.params)
        self.kv: dict[int, tuple[int, int]] = {}  # cache slot -> (absolute position, token)

    def run(self, step: StepBatch) -> dict[int, int]:
        for c in step.chunks:
            for i, t in enumerate(c.token_ids):
                p = c.start_pos - c.private_start + i
                self.kv[c.block_ids[p // BS] * BS + p % BS] = (c.start_pos + i, t)
        sampled = {}
        for c in step.chunks:
            ctx = self.context(step, c)
            if isinstance(c.owner, SegOwner):  # a segment job: a prefix of some prompt, never sampled
                assert not c.sample and any(p[: len(ctx)] == ctx for p in self.job.prompts)
                continue
            seq = self.sched.seq(c.owner.seq_id)
            want = self.job.prompts[seq.request] + seq.generated
            assert ctx == want[: len(ctx)], f"seq {c.owner.seq_id} sees a wrong context"
            if c.sample:
                assert len(ctx) == len(want)
                sampled[c.owner.seq_id] = next_token(ctx, seq.sample)
        return sampled

    def context(self, step: StepBatch, c) -> list[int]:
        cells = []
        for g in c.segments:
            view = step.segments[g]
            cells += [self.kv[view.block_ids[p // BS] * BS + p % BS] for p in range(view.length)]
        assert len(cells) == c.private_start
        cells += [self.kv[c.block_ids[p // BS] * BS + p % BS] for p in range(c.private_len)]
        assert [pos for pos, _ in cells] == list(range(len(cells))), "positions out of place"
        return [t for _, t in cells]


def drive(job: Job, blocks: int = 1000, budget: int = 16, check_segments: bool = True, **opts) -> Trace:
    """Run the job to the end; check budget and pool integrity every step, segment lifetimes on finish."""
    pool = BlockPool(blocks)
    sched = Scheduler(job.plan, TokenArrays.from_lists(job.prompts), job.params, pool,
                      SchedulerConfig(block_size=BS, token_budget=budget, **opts))
    engine = FakeEngine(job, sched)
    steps, finished_at, seg_blocks = [], {}, {}
    while (step := sched.schedule()) is not None:
        assert len(steps) < 5000, "no progress"
        assert step.num_tokens <= budget
        seg_blocks.update({g: v.block_ids for g, v in step.segments.items()})
        sampled = engine.run(step)
        sched.on_step_done(step, sampled)
        for sid in sampled:
            seq = sched.seq(sid)
            if len(seq.generated) == job.stop_len[seq.request]:
                sched.finish(sid)
                finished_at[sid] = len(steps)
        if check_segments:
            check_segment_blocks(sched, engine.num_seqs, pool, seg_blocks)
        pool.check_integrity()
        steps.append(step)
    assert pool.num_free == pool.num_total and not sched.has_unfinished()
    assert sched.counters.prefill_tokens + sched.counters.decode_tokens == sum(st.num_tokens for st in steps)
    assert sched.counters.steps == len(steps)
    outputs = {(s.request, s.sample): s.generated for s in map(sched.seq, range(engine.num_seqs))}
    return Trace(sched, pool, steps, finished_at, outputs)


def check_segment_blocks(sched: Scheduler, num_seqs: int, pool: BlockPool, seg_blocks: dict[int, tuple[int, ...]]) -> None:
    """A segment's blocks stay held while any member is unfinished and are free once none is."""
    live = {g for s in map(sched.seq, range(num_seqs)) if s.status is not SeqStatus.FINISHED for g in s.chain}
    for g, blocks in list(seg_blocks.items()):
        if g in live:
            assert all(pool.is_used(b) for b in blocks), f"segment {g} lost blocks under a live member"
        else:
            assert not any(pool.is_used(b) for b in blocks), f"segment {g} kept blocks after its last member"
            del seg_blocks[g]


def segment_jobs_run(trace: Trace) -> set[int]:
    return {c.owner.seg_id for st in trace.steps for c in st.chunks if isinstance(c.owner, SegOwner)}


def seqs_in(step: StepBatch) -> set[int]:
    """The request sequences with a chunk in the step."""
    return {c.owner.seq_id for c in step.chunks if isinstance(c.owner, SeqOwner)}


# ---- workloads ---------------------------------------------------------------------------------
SYS = list(range(1, 9))  # 8 tokens, 2 blocks
DOC_A = list(range(11, 19))  # 2 blocks
DOC_B = list(range(21, 25))  # 1 block


def two_level(max_tokens: int = 6, stop_len: list[int] | None = None) -> Job:
    """Requests 0-1 under SYS+DOC_B, 2-4 under SYS+DOC_A, 5 under SYS alone; plan runs A, B, then 5."""
    qs = [[31], [32, 33, 34, 35, 36, 37, 38, 39, 40], [41, 42, 43], [51, 52, 53, 54, 55], [61] * 6, [71, 72]]
    prompts = [SYS + DOC_B + q for q in qs[:2]] + [SYS + DOC_A + q for q in qs[2:5]] + [SYS + qs[5]]
    plan = make_plan([(-1, 0, 8, 0, 6, 6), (0, 8, 8, 0, 3, 3), (0, 8, 4, 3, 2, 2)],
                     order=[2, 3, 4, 0, 1, 5], leaf=[1, 1, 1, 2, 2, 0])
    return Job(prompts, [SamplingParams(max_tokens=max_tokens)] * 6, plan, stop_len or [])


def random_job(seed: int, n_max: int = 2) -> Job:
    """Prompts from pools of system / document / question parts, planned by build_plan."""
    rng = np.random.default_rng(seed)
    pools = [[list(rng.integers(1, 50, size=rng.integers(0, 10))) for _ in range(k)] for k in (2, 3, 4)]
    prompts = [sum((p[rng.integers(len(p))] for p in pools), []) + [int(rng.integers(1, 50))] for _ in range(14)]
    params = [SamplingParams(max_tokens=int(rng.integers(1, 8)), n=int(rng.integers(1, n_max + 1))) for _ in prompts]
    tokens = TokenArrays.from_lists(prompts)
    plan = build_plan(tokens, np.array([p.max_tokens for p in params]), np.array([p.n for p in params]),
                      PlanSettings(block_size=BS), model="m", fingerprint="f", errors=0)
    return Job([[int(t) for t in p] for p in prompts], params, plan)


# ---- tests -------------------------------------------------------------------------------------
def test_two_level_plan_runs_each_segment_once_and_matches_reference():
    job = two_level()
    trace = drive(job, budget=8)
    assert trace.outputs == job.reference()
    assert trace.sched.counters.preemptions == 0
    covered: dict[SeqOwner | SegOwner, list[int]] = {}  # sample or segment job -> prompt positions computed
    first_member_step: dict[int, int] = {}
    last_job_step: dict[int, int] = {}
    for i, st in enumerate(trace.steps):
        for c in st.chunks:
            positions = range(c.start_pos, c.start_pos + len(c.token_ids))
            if isinstance(c.owner, SegOwner):
                last_job_step[c.owner.seg_id] = i
                covered.setdefault(c.owner, []).extend(positions)
                continue
            covered.setdefault(c.owner, []).extend(p for p in positions if p < len(job.prompts[c.owner.seq_id]))
            for g in c.segments:
                first_member_step.setdefault(g, i)
    segs = job.plan.segments
    for g, seg in enumerate(segs):
        assert covered[SegOwner(g)] == list(range(seg.start, seg.start + seg.length))  # exactly once, in order
        assert last_job_step[g] < first_member_step[g]
    ends = [8 + 4, 8 + 4, 16, 16, 16, 8]  # where each request's private part starts
    for sid, prompt in enumerate(job.prompts):
        assert covered[SeqOwner(sid)] == list(range(ends[sid], len(prompt)))


def test_every_running_decode_is_in_every_step():
    job = two_level(max_tokens=9)
    trace = drive(job, budget=6)
    assert trace.sched.counters.preemptions == 0
    for sid in range(len(job.prompts)):
        in_step = [i for i, st in enumerate(trace.steps) if sid in seqs_in(st)]
        first_decode = next(i for i, st in enumerate(trace.steps) for c in st.chunks
                            if c.owner == SeqOwner(sid) and c.start_pos >= len(job.prompts[sid]))
        assert set(range(first_decode, trace.finished_at[sid] + 1)) <= set(in_step)
    assert trace.sched.counters.decode_tokens == sum(9 - 1 for _ in job.prompts)


def test_segment_blocks_are_freed_when_the_last_member_finishes():
    job = two_level(stop_len=[2, 2, 3, 4, 4, 9])
    trace = drive(job, budget=8)  # drive checks segment blocks after every finish
    assert trace.outputs == job.reference()
    # SYS is read by request 5, the last to finish: it lives to the end; DOC_A (segment 1) dies earlier
    last = {g: max(i for i, st in enumerate(trace.steps) if g in st.segments) for g in range(3)}
    assert last[1] < last[0] and last[2] < last[0]


@pytest.mark.parametrize("max_running, blocks", [(6, 11), (None, 11)])
def test_tiny_budget_preempts_and_outputs_are_unchanged(max_running, blocks):
    # memory mode underestimates: group A's first member stops after 1 token, the others run long
    job = two_level(max_tokens=12, stop_len=[12, 12, 1, 12, 12, 12])
    big = drive(job, budget=8)
    small = drive(job, blocks=blocks, budget=8, max_running=max_running, check_segments=False)
    assert small.sched.counters.preemptions > 0 and small.sched.counters.recomputed_tokens > 0
    assert small.outputs == big.outputs == job.reference()
    assert small.sched.counters.peak_blocks <= blocks < big.sched.counters.peak_blocks


def test_recompute_chunk_shorter_than_the_prompt_tail_after_long_generation():
    # a sequence preempted after 9+ tokens is recomputed in 5-token chunks of a 13-token prompt: a chunk
    # ending inside the prompt must carry no generated token (a negative slice end once took some)
    prompts = [list(range(1, 14)), list(range(20, 33))]
    job = Job(prompts, [SamplingParams(max_tokens=12)] * 2, make_plan([], [0, 1], [-1, -1]))
    trace = drive(job, blocks=9, budget=5, max_running=2, check_segments=False)
    assert trace.sched.counters.preemptions > 0
    assert trace.outputs == job.reference()


def test_last_running_sequence_evicts_idle_segment_kv_rather_than_failing():
    # 5 blocks: request 0 needs segment A (1) + 3 private; request 1's segment B (2) must go meanwhile
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14]]
    plan = make_plan([(-1, 0, 4, 0, 1, 1), (-1, 0, 8, 1, 1, 1)], order=[0, 1], leaf=[0, 1])
    job = Job(prompts, [SamplingParams(max_tokens=12), SamplingParams(max_tokens=4)], plan)
    trace = drive(job, blocks=5, budget=8, max_running=2, check_segments=False)
    assert trace.outputs == job.reference()
    assert trace.sched.counters.segment_evictions == 1 and trace.sched.counters.preemptions >= 1
    job_b = [c for st in trace.steps for c in st.chunks if c.owner == SegOwner(1)]
    assert [p for c in job_b for p in range(c.start_pos, c.start_pos + len(c.token_ids))] == [*range(8)] * 2


def test_budget_that_cannot_hold_one_prompt_raises_at_once():
    job = two_level()
    with pytest.raises(KVBudgetError, match=r"5 blocks of 4 tokens .*\(request 3\) alone: it needs 4 shared \+ 2 private"):
        drive(job, blocks=5)


def test_budget_that_cannot_hold_one_output_raises_when_it_grows():
    job = Job([[1, 2, 3]], [SamplingParams(max_tokens=20)], make_plan([], [0], [-1]))
    with pytest.raises(KVBudgetError, match=r"2 blocks of 4 tokens .* needs 0 shared \+ 3 private"):
        drive(job, blocks=2)


def test_n_samples_share_the_prompt():
    prompts = [list(range(1, 11)), [7, 7, 7]]  # 10 tokens: 2 whole blocks shared, 2 tokens per sample
    params = [SamplingParams(max_tokens=4, n=3), SamplingParams(max_tokens=3)]
    plan = build_plan(TokenArrays.from_lists(prompts), np.array([4, 3]), np.array([3, 1]), PlanSettings(block_size=BS),
                      model="m", fingerprint="f", errors=0)
    assert [(s.start, s.length, s.sequences) for s in plan.segments] == [(0, 8, 3)]
    job = Job(prompts, params, plan)
    trace = drive(job, budget=16)
    assert trace.outputs == job.reference()
    assert len({tuple(v) for (r, _), v in trace.outputs.items() if r == 0}) == 3  # samples differ
    assert trace.sched.counters.prefill_tokens == 8 + 3 * 2 + 3
    views = {st.segments[0].block_ids for st in trace.steps if 0 in st.segments}
    assert len(views) == 1  # one copy of the shared prompt's KV


def test_decode_heavy_group_first_rides_along_with_later_prefill():
    # requests 0-1: long shared prompt, 1 output token; 2-3: short prompts, 10 output tokens each
    doc = list(range(1, 21))
    prompts = [doc + [30, 31, 32], doc + [40, 41, 42], [5, 6, 7], [8, 9]]
    params = [SamplingParams(max_tokens=1)] * 2 + [SamplingParams(max_tokens=10)] * 2
    plan = make_plan([(-1, 0, 20, 2, 2, 2)], order=[2, 3, 0, 1], leaf=[-1, -1, 0, 0])
    job = Job(prompts, params, plan)
    by_plan = drive(job, budget=6)
    by_input = drive(job, budget=6, order="input")
    assert by_plan.outputs == by_input.outputs == job.reference()
    mixed = [st for st in by_plan.steps
             if any(c.owner in (SeqOwner(2), SeqOwner(3)) and c.start_pos >= len(prompts[c.owner.seq_id]) for c in st.chunks)
             and any(c.owner not in (SeqOwner(2), SeqOwner(3)) and len(c.token_ids) > 1 for c in st.chunks)]
    assert len(mixed) >= 3
    assert len(by_plan.steps) < len(by_input.steps)


def test_input_order_computes_segments_once_too():
    job = two_level()
    by_plan, by_input = drive(job, budget=8), drive(job, budget=8, order="input")
    assert by_input.outputs == by_plan.outputs == job.reference()
    assert by_input.sched.counters.prefill_tokens == by_plan.sched.counters.prefill_tokens
    # segment jobs 0, 1, 2 build SYS, DOC_A, DOC_B; a child segment waits for its parent's step to end
    assert [c.owner for c in by_plan.steps[0].chunks] == [c.owner for c in by_input.steps[0].chunks] == [SegOwner(0)]
    assert by_plan.steps[1].chunks[0].owner == SegOwner(1) and by_input.steps[1].chunks[0].owner == SegOwner(2)


def test_fixed_admission_caps_running_requests():
    job = two_level()
    capped, free = drive(job, budget=16, max_running=2), drive(job, budget=16)
    def most(t: Trace) -> int:
        return max(len(seqs_in(st)) for st in t.steps)
    assert most(capped) <= 2 < most(free)
    assert capped.outputs == free.outputs


def test_observed_output_lengths_let_more_requests_in():
    # 8 requests under one 1-block segment, max_tokens 40 but every one stops after 2 tokens
    prompts = [[1, 2, 3, 4, 10 + i] for i in range(8)]
    plan = make_plan([(-1, 0, 4, 0, 8, 8)], order=list(range(8)), leaf=[0] * 8)
    job = Job(prompts, [SamplingParams(max_tokens=40)] * 8, plan, stop_len=[2] * 8)
    trace = drive(job, blocks=1 + 2 * 11, budget=16)  # 11 blocks = 1 prompt token + 40 output tokens
    assert trace.outputs == job.reference()
    running = [len(seqs_in(st)) for st in trace.steps]
    assert running[:2] == [0, 2] and max(running) > 2  # step 0 builds the segment


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("blocks, budget, opts", [(1000, 16, {}), (14, 5, {}), (14, 7, {"max_running": 4}),
                                                    (14, 7, {"order": "input", "max_running": 3})])
def test_planned_random_workloads_match_reference(seed, blocks, budget, opts):
    job = random_job(seed)
    trace = drive(job, blocks=blocks, budget=budget, check_segments=blocks == 1000, **opts)
    assert trace.outputs == job.reference()
    assert segment_jobs_run(trace) == set(range(len(job.plan.segments)))


def _scheduled() -> tuple[Job, BlockPool, Scheduler, StepBatch]:
    """A two-level job's scheduler right after its first schedule() (the step not yet done)."""
    job = two_level()
    pool = BlockPool(100)
    sched = Scheduler(job.plan, TokenArrays.from_lists(job.prompts), job.params, pool, SchedulerConfig(block_size=BS))
    return job, pool, sched, sched.schedule()


def _done(sched: Scheduler, step: StepBatch) -> None:
    sched.on_step_done(step, {c.owner.seq_id: 1 for c in step.chunks if c.sample})


def test_a_second_schedule_before_on_step_done_is_refused():
    _, _, sched, _ = _scheduled()
    with pytest.raises(RuntimeError, match="before on_step_done"):
        sched.schedule()


def test_on_step_done_needs_a_token_for_exactly_the_sampled_chunks():
    _, _, sched, step = _scheduled()
    with pytest.raises(ValueError, match="expected exactly"):
        sched.on_step_done(step, {0: 1})


def test_finish_before_on_step_done_is_refused():
    _, _, sched, _ = _scheduled()
    with pytest.raises(RuntimeError, match="before on_step_done"):
        sched.finish(0)


def test_on_step_done_of_a_step_already_done_is_refused():
    _, _, sched, step = _scheduled()
    _done(sched, step)
    with pytest.raises(ValueError, match="not the one last scheduled"):
        sched.on_step_done(step, {})


def test_an_unknown_sequence_id_is_refused():
    _, _, sched, step = _scheduled()
    _done(sched, step)
    with pytest.raises(ValueError, match="no request sequence with id 6"):
        sched.seq(6)


def test_a_plan_of_another_block_size_is_refused():
    job, pool, _, _ = _scheduled()
    with pytest.raises(ValueError, match="block size 4, scheduler uses 16"):
        Scheduler(job.plan, TokenArrays.from_lists(job.prompts), job.params, pool, SchedulerConfig(block_size=16))


def test_scheduler_config_refuses_an_unknown_order_and_a_cap_below_one():
    with pytest.raises(ValueError, match="'fifo'"):
        SchedulerConfig(order="fifo")
    with pytest.raises(ValueError, match="got 0"):
        SchedulerConfig(max_running=0)


def test_admission_is_memory_or_a_positive_request_cap():
    with pytest.raises(ValueError, match="'lots'"):
        parse_admission("lots")
    assert parse_admission("4") == 4 and parse_admission("memory") is None


def test_a_request_with_one_sample_has_one_sequence_id():
    _, _, sched, step = _scheduled()
    _done(sched, step)
    assert list(sched.seq_ids(5)) == [5]


def test_an_empty_plan_schedules_nothing():
    empty = Scheduler(make_plan([], [], []), TokenArrays.from_lists([]), [], BlockPool(100), SchedulerConfig(block_size=BS))
    assert empty.schedule() is None and not empty.has_unfinished()


def test_output_estimator_is_the_rounded_up_mean_capped_at_max_tokens():
    est = OutputEstimator()
    assert est.expected(3, 50) == 50
    est.observe(3, 2)
    est.observe(3, 5)
    assert (est.expected(3, 50), est.expected(3, 3), est.expected(-1, 7)) == (4, 3, 7)


def test_stop_admitting_lets_the_running_finish_and_starts_nothing_new():
    job = two_level(max_tokens=5, stop_len=[5, 5, 1, 5, 5, 5])  # request 2 is done after step 2
    pool = BlockPool(1000)
    sched = Scheduler(job.plan, TokenArrays.from_lists(job.prompts), job.params, pool,
                      SchedulerConfig(block_size=BS, token_budget=8, max_running=2))
    engine = FakeEngine(job, sched)
    seen: set[int] = set()
    for i in range(60):
        if i == 3:  # request 3 still runs; without the stop, request 4 would start now
            sched.stop_admitting()
            started = set(seen)
        if (step := sched.schedule()) is None:
            break
        seen |= seqs_in(step)
        sampled = engine.run(step)
        sched.on_step_done(step, sampled)
        for sid in sampled:
            if len(sched.seq(sid).generated) == job.stop_len[sid]:
                sched.finish(sid)
    assert step is None and seen == started == {2, 3}  # the plan runs requests 2, 3 first; cap 2
    assert [sched.seq(s).status.value for s in range(6)] == ["waiting"] * 2 + ["finished"] * 2 + ["waiting"] * 2
    assert sched.has_unfinished()


def test_refused_requests_never_run_and_the_rest_runs_the_same_plan():
    """A request the engine refuses (it cannot fit the pool alone) is dropped by the scheduler from the
    plan it was given, never by a replan: the plan's shared segment it was under is still computed once
    for the request left under it, and every block comes back at the end."""
    prefix = list(range(1, 9))  # two blocks, shared by requests 0 and 1
    prompts = [prefix + [20, 21], prefix + list(range(30, 70)), [50, 51, 52]]
    params = [SamplingParams(max_tokens=3), SamplingParams(max_tokens=3), SamplingParams(max_tokens=2)]
    job = Job(prompts, params, build_plan(TokenArrays.from_lists(prompts), np.array([3, 3, 2]), np.ones(3, np.int64),
                                          PlanSettings(block_size=BS), model="m", fingerprint="fp", errors=0))
    assert any(s.count == 2 for s in job.plan.segments), "requests 0 and 1 share a segment in the plan"
    config = SchedulerConfig(block_size=BS, token_budget=16)
    with pytest.raises(KVBudgetError):  # request 1 needs 13 blocks alone
        Scheduler(job.plan, TokenArrays.from_lists(prompts), params, BlockPool(8), config)
    pool = BlockPool(8)
    sched = Scheduler(job.plan, TokenArrays.from_lists(prompts), params, pool, config, refused=frozenset({1}))
    engine = FakeEngine(job, sched)
    ran: set[int] = set()
    while (step := sched.schedule()) is not None:
        ran |= {sched.seq(c.owner.seq_id).request for c in step.chunks if isinstance(c.owner, SeqOwner)}
        sampled = engine.run(step)
        sched.on_step_done(step, sampled)
        for sid in sampled:
            if len(sched.seq(sid).generated) == params[sched.seq(sid).request].max_tokens:
                sched.finish(sid)
        pool.check_integrity()
    assert ran == {0, 2} and not sched.has_unfinished() and pool.num_free == pool.num_total
    want = job.reference()
    assert {r: sched.seq(sched.seq_ids(r)[0]).generated for r in (0, 2)} == {0: want[0, 0], 2: want[2, 0]}
