"""The plan-driven scheduler: turns a Plan into one StepBatch per step, pure Python over ints.

The one rule: each sequence's computed tokens catch up with its known tokens under a per-step token
budget. Every running decode gets its token first; prefill chunks (shared-segment jobs and request
prefills) fill the rest in admission order, which follows the order policy. A chunk may attend only to
segments completed in an earlier, reported step. Memory: a segment's blocks are allocated whole when
its first member is admitted and freed the moment its last member finishes; private blocks grow as
tokens are computed. When a block is missing, the newest running request sequence is preempted (its
private KV dropped, recomputed later from prompt + generated tokens; its segments are kept).

Invariants: the pool holds exactly the blocks of allocated segments plus the private blocks of
running sequences; running request sequences never exceed the token budget, so decodes always fit.
The engine loop is: `schedule()` -> run the step -> `on_step_done(step, sampled)` -> `finish(...)`
for each sequence it decided is done. Running request sequences (by seq id) and building segment jobs
(by segment id) are kept apart; their admission ticks give the one placement order.
"""

from __future__ import annotations

import heapq
from collections import deque

from batchcli.engine.step_builder import SchedulerCounters, StepBuilder
from batchcli.engine.kv_pool import BlockPool, OutOfBlocks
from batchcli.engine.policies import ORDERS, Candidate, OutputEstimator, PoolView, SchedulerConfig, make_admission
from batchcli.engine.sequence import SegmentJob, SegStatus, Sequence, SeqStatus, build_jobs, shared_blocks, too_small
from batchcli.engine.step import SegmentView, StepBatch
from batchcli.errors import KVBudgetError
from batchcli.planning.plan import Plan
from batchcli.params import SamplingParams
from batchcli.planning.token_arrays import TokenArrays


class Scheduler:
    """Owns sequence state and the pool's bookkeeping; the engine owns text, stop checks and the model."""

    def __init__(
        self, plan: Plan, prompts: TokenArrays, params: list[SamplingParams], pool: BlockPool, config: SchedulerConfig,
        refused: frozenset[int] = frozenset(),
    ) -> None:
        """`refused`: requests (plan indices) that never run, answered by the engine without the model (they
        cannot fit the pool even alone); their sequences are finished before the first step, so the
        segments they would have shared hold nothing for them."""
        if plan.settings.block_size != config.block_size:
            raise ValueError(f"plan made for block size {plan.settings.block_size}, scheduler uses {config.block_size}")
        self._cfg, self._prompts, self._pool = config, prompts, pool
        jobs = build_jobs(plan, prompts.lengths, params, config.block_size)
        self._jobs, self._seqs, self._segs = jobs, jobs.seqs, jobs.segments
        self._admission = make_admission(config.max_running)
        self._estimator = OutputEstimator()
        order = ORDERS[config.order](plan)
        self._waiting: deque[Sequence] = deque(self._seqs[i] for r in order for i in self.seq_ids(r))
        self._running: dict[int, Sequence] = {}  # request sequences by seq id, in admission order
        self._building: dict[int, SegmentJob] = {}  # segment jobs with blocks, not READY yet, by segment id
        self._tick = 0  # admission counter: orders running sequences and building segments together
        self._running_requests: dict[int, int] = {}  # request index -> running samples
        self._unfinished = len(self._seqs)
        self._admitting = True
        self._pending: StepBatch | None = None
        self._draft = StepBuilder(config.token_budget)
        self.counters = SchedulerCounters()
        for r in refused:
            for seq_id in self.seq_ids(r):
                self._drop(self._seqs[seq_id])
        for r in order:
            if r not in refused:
                self._check_prompt_fits(self._seqs[jobs.first_seq[r]])

    # ---- queries --------------------------------------------------------------------------------
    def seq(self, seq_id: int) -> Sequence:
        """Read-only view of a request sample: request, sample, prompt_len, generated."""
        return self._jobs.seq(seq_id)

    def seq_ids(self, request: int) -> range:
        """The seq ids of a request's samples, sample 0 first."""
        return self._jobs.seq_ids(request)

    def has_unfinished(self) -> bool:
        return self._unfinished > 0

    def stop_admitting(self) -> None:
        """Admit nothing more (a stop was requested): schedule() returns None once the running finish."""
        self._admitting = False

    def restore_sequence(self, seq_id: int, generated: list[int], finished: bool) -> None:
        """Before the first step, hand a waiting sequence what an earlier run generated (engine/resume.py):
        it recomputes those tokens with its prompt on admission, as after a preemption; a finished one
        retires now and never runs."""
        if self.counters.steps or self._pending is not None:
            raise RuntimeError("restore_sequence() must come before the first step")
        seq = self.seq(seq_id)
        if seq.status is not SeqStatus.WAITING or seq.generated:
            raise ValueError(f"sequence {seq_id} was restored twice")
        seq.generated = list(generated)
        if finished:
            self._retire(seq)  # left in the waiting queue; admission skips it

    # ---- the loop -------------------------------------------------------------------------------
    def schedule(self) -> StepBatch | None:
        """The next step's work, or None when every sequence has finished (or, after stop_admitting(),
        every running one has)."""
        if self._pending is not None:
            raise RuntimeError("schedule() called before on_step_done() reported the previous step")
        if self._unfinished == 0 or not (self._admitting or self._running):
            return None
        self._admit()
        self._draft = StepBuilder(self._cfg.token_budget)
        building = list(self._building.values())
        prefills: list[Sequence] = []
        for seq in list(self._running.values()):
            if not seq.decoding:
                prefills.append(seq)
            elif seq.status is SeqStatus.RUNNING:  # not preempted by an earlier decode's growth
                self._place_sequence(seq, 1, decode=True)
        # prefill chunks in admission order: a segment job was allocated just before its first member
        jobs = [(j.admitted_at, self._prefill_segment, j) for j in building]
        seqs = [(s.admitted_at, self._prefill_sequence, s) for s in prefills]
        for _, prefill, item in heapq.merge(jobs, seqs):  # ticks are unique: the tuples never compare further
            if self._draft.left == 0:
                break
            prefill(item)
        return self._seal()

    def on_step_done(self, step: StepBatch, sampled: dict[int, int]) -> None:
        """Record a finished step: the token sampled for every `sample=True` chunk, by seq id."""
        if step is not self._pending:
            raise ValueError("on_step_done() got a step that is not the one last scheduled")
        want = {c.owner.seq_id for c in step.chunks if c.sample}
        if set(sampled) != want:
            raise ValueError(f"sampled tokens for seq ids {sorted(sampled)}, expected exactly {sorted(want)}")
        for seq_id, token in sampled.items():
            self._seqs[seq_id].generated.append(int(token))
        for job in [j for j in self._building.values() if j.computed == j.length]:  # its last chunk just ran
            job.status = SegStatus.READY
            del self._building[job.seg_id]
        self._pending = None

    def finish(self, seq_id: int) -> None:
        """The engine is done with a running sequence: free its KV now, and its segments' if it was last."""
        if self._pending is not None:
            raise RuntimeError("finish() called before on_step_done() reported the pending step")
        seq = self.seq(seq_id)
        if seq.status is not SeqStatus.RUNNING:
            raise ValueError(f"cannot finish sequence {seq_id}: it is {seq.status.value}")
        self._stop_running(seq)
        self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        """Mark `seq` finished (its own KV already freed): learn its length, release segments it was last under."""
        seq.status = SeqStatus.FINISHED
        self._unfinished -= 1
        self._estimator.observe(seq.group, len(seq.generated))
        for g in seq.chain:
            seg = self._segs[g]
            seg.users -= 1
            if seg.users == 0:
                self._release_segment(seg, SegStatus.FREED)

    def _drop(self, seq: Sequence) -> None:
        """Finish a waiting sequence that never ran (left in the waiting queue; admission skips it)."""
        seq.status = SeqStatus.FINISHED
        self._unfinished -= 1
        for g in seq.chain:
            self._segs[g].users -= 1

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self) -> None:
        if not (self._waiting and self._admitting):
            return
        reserved = sum(self._reservation(s) for s in self._running.values())
        while self._waiting and len(self._running) < self._cfg.token_budget:
            seq = self._waiting[0]
            if seq.status is SeqStatus.FINISHED:  # retired before it ever ran (restored as finished, or refused)
                self._waiting.popleft()
                continue
            cand = self._candidate(seq)
            view = PoolView(self._pool.num_free, reserved, len(self._running_requests))
            if not self._admission.admits(cand, view):
                if self._running:
                    return
                self._make_room_alone(seq, cand)
            self._waiting.popleft()
            self._start(seq)
            reserved += cand.private_blocks

    def _candidate(self, seq: Sequence) -> Candidate:
        new = sum(self._segs[g].length for g in seq.chain if self._segs[g].status is SegStatus.UNALLOCATED)
        private = self._blocks(seq.prompt_len - seq.private_start + self._expected(seq))
        return Candidate(seq.request, seq.request in self._running_requests, new // self._cfg.block_size, private)

    def _start(self, seq: Sequence) -> None:
        for g in seq.chain:
            seg = self._segs[g]
            if seg.status is SegStatus.UNALLOCATED:
                seg.blocks = tuple(self._pool.allocate(seg.length // self._cfg.block_size))
                seg.status = SegStatus.BUILDING
                seg.admitted_at, self._tick = self._tick, self._tick + 1
                self._building[seg.seg_id] = seg
        seq.expected = self._expected(seq)
        seq.status = SeqStatus.RUNNING
        seq.admitted_at, self._tick = self._tick, self._tick + 1
        self._running[seq.seq_id] = seq
        self._running_requests[seq.request] = self._running_requests.get(seq.request, 0) + 1

    def _expected(self, seq: Sequence) -> int:
        return max(self._estimator.expected(seq.group, seq.max_tokens), len(seq.generated) + 1)

    def _reservation(self, seq: Sequence) -> int:
        return max(0, self._blocks(seq.prompt_len - seq.private_start + seq.expected) - len(seq.blocks))

    # ---- placing chunks -------------------------------------------------------------------------

    def _prefill_segment(self, job: SegmentJob) -> None:
        if job.status is SegStatus.BUILDING and self._ready(job.chain):  # not evicted by a decode's growth
            self._draft.add(job.next_chunk(self._prompts, min(job.length - job.computed, self._draft.left),
                                           self._cfg.block_size))

    def _prefill_sequence(self, seq: Sequence) -> None:
        if seq.status is SeqStatus.RUNNING and seq.known > seq.computed and self._ready(seq.chain):
            self._place_sequence(seq, min(seq.known - seq.computed, self._draft.left))

    def _place_sequence(self, seq: Sequence, n: int, decode: bool = False) -> None:
        """The next `n` known tokens of `seq` (a decode: its one generated token, a new block every
        block_size steps), preempting for blocks if need be."""
        need = -(-(seq.computed + n) // self._cfg.block_size)
        if need > len(seq.blocks) and not self._grow(seq, need):
            return
        self._draft.add(seq.next_chunk(self._prompts, n), decode)

    def _seal(self) -> StepBatch:
        chunks = tuple(self._draft.chunks.values())
        assert chunks, f"scheduler stalled with {self._unfinished} unfinished sequences and nothing to run"
        used = {g for chain in {c.segments for c in chunks} for g in chain}
        views = {g: SegmentView(g, self._segs[g].length, self._segs[g].blocks) for g in sorted(used)}
        self._draft.count_into(self.counters)
        self.counters.peak_blocks = max(self.counters.peak_blocks, self._pool.num_used)
        self._pending = StepBatch(chunks, views)
        return self._pending

    def _ready(self, chain: tuple[int, ...]) -> bool:
        return all(self._segs[g].status is SegStatus.READY for g in chain)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self._cfg.block_size)

    # ---- memory pressure ------------------------------------------------------------------------
    def _grow(self, seq: Sequence, need: int) -> bool:
        """Give `seq` `need` private blocks, preempting to make room; False if `seq` itself was preempted."""
        while len(seq.blocks) < need:
            try:
                seq.blocks += self._pool.allocate(need - len(seq.blocks))
            except OutOfBlocks:
                newest = next(reversed(self._running.values()))
                if newest is not seq:
                    self._preempt(newest)
                elif len(self._running) > 1:  # others hold blocks: wait for them, recomputed later
                    self._preempt(seq)
                    return False
                elif not self._evict_idle_segments():
                    raise self._too_small(seq, need) from None
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.counters.recomputed_tokens += seq.computed - self._draft.drop(seq.owner)
        self.counters.preemptions += 1
        self._stop_running(seq)
        seq.computed = 0
        seq.status = SeqStatus.WAITING
        self._waiting.appendleft(seq)

    def _stop_running(self, seq: Sequence) -> None:
        del self._running[seq.seq_id]
        left = self._running_requests.pop(seq.request) - 1
        if left:
            self._running_requests[seq.request] = left
        self._pool.free(seq.blocks)
        seq.blocks = []

    def _evict_idle_segments(self) -> bool:
        """Last resort: drop the KV of segments no running sequence reads (recomputed when re-admitted)."""
        in_use = {g for s in self._running.values() for g in s.chain}
        idle = [s for s in self._segs if s.status in (SegStatus.BUILDING, SegStatus.READY) and s.seg_id not in in_use]
        for seg in idle:
            self._draft.drop(seg.owner)
            self._release_segment(seg, SegStatus.UNALLOCATED)
        self.counters.segment_evictions += len(idle)
        return bool(idle)

    def _release_segment(self, seg: SegmentJob, status: SegStatus) -> None:
        self._building.pop(seg.seg_id, None)
        if seg.blocks:
            self._pool.free(seg.blocks)
        seg.blocks, seg.computed, seg.status = (), 0, status

    def _make_room_alone(self, seq: Sequence, cand: Candidate) -> None:
        """Liveness: with nothing running, the head starts whatever the policy says (estimates are upper
        bounds); idle segment KV is dropped if its segments and a first block do not fit otherwise."""
        if cand.new_blocks + 1 > self._pool.num_free:
            self._evict_idle_segments()
            cand = self._candidate(seq)
        # _check_prompt_fits guarantees this once nothing else holds blocks
        assert cand.new_blocks + 1 <= self._pool.num_free, f"sequence {seq.seq_id} cannot start in an idle pool"

    def _check_prompt_fits(self, seq: Sequence) -> None:
        private = self._blocks(seq.prompt_len - seq.private_start)
        if shared_blocks(seq, self._segs, self._cfg.block_size) + private > self._pool.num_total:
            raise self._too_small(seq, private)

    def _too_small(self, seq: Sequence, private_blocks: int) -> KVBudgetError:
        return too_small(seq, self._segs, self._cfg.block_size, self._pool.num_total, private_blocks)
