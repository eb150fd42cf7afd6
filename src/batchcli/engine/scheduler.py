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
for each sequence it decided is done.
"""

from __future__ import annotations

from collections import deque
from batchcli.engine.draft import SchedulerCounters, StepDraft
from batchcli.engine.kv_pool import BlockPool, OutOfBlocks
from batchcli.engine.policies import ORDERS, Candidate, OutputEstimator, PoolView, SchedulerConfig, make_admission
from batchcli.engine.sequence import SegmentJob, SegStatus, Sequence, SeqStatus, build_jobs
from batchcli.engine.step import SegmentView, SeqChunk, StepBatch
from batchcli.errors import KVBudgetError
from batchcli.plan import Plan
from batchcli.requests import SamplingParams
from batchcli.tokens import TokenArrays


class Scheduler:
    """Owns sequence state and the pool's bookkeeping; the engine owns text, stop checks and the model."""

    def __init__(
        self, plan: Plan, prompts: TokenArrays, params: list[SamplingParams], pool: BlockPool, config: SchedulerConfig
    ) -> None:
        if plan.settings.block_size != config.block_size:
            raise ValueError(f"plan made for block size {plan.settings.block_size}, scheduler uses {config.block_size}")
        self._cfg, self._prompts, self._pool = config, prompts, pool
        jobs = build_jobs(plan, prompts.lengths, params, config.block_size)
        self._seqs, self._segs, self._first_seq = jobs.seqs, jobs.segments, jobs.first_seq
        self._admission = make_admission(config.max_running)
        self._estimator = OutputEstimator()
        order = ORDERS[config.order](plan)
        self._waiting: deque[Sequence] = deque(self._seqs[i] for r in order for i in self.seq_ids(r))
        self._running: dict[int, Sequence | SegmentJob] = {}  # by seq id, in admission order
        self._running_requests: dict[int, int] = {}  # request index -> running samples
        self._num_running_seqs = 0
        self._unfinished = len(self._seqs)
        self._admitting = True
        self._pending: StepBatch | None = None
        self._draft = StepDraft(config.token_budget)
        self.counters = SchedulerCounters()
        for r in order:
            self._check_prompt_fits(self._seqs[self._first_seq[r]])

    # ---- queries --------------------------------------------------------------------------------
    def seq(self, seq_id: int) -> Sequence:
        """Read-only view of a request sample: request, sample, prompt_len, generated."""
        if not 0 <= seq_id < len(self._seqs):
            raise ValueError(f"no request sequence with id {seq_id}")
        return self._seqs[seq_id]

    def seq_ids(self, request: int) -> range:
        """The seq ids of a request's samples, sample 0 first."""
        first = self._first_seq[request]
        end = self._first_seq[request + 1] if request + 1 < len(self._first_seq) else len(self._seqs)
        return range(first, end)

    def has_unfinished(self) -> bool:
        return self._unfinished > 0

    def stop_admitting(self) -> None:
        """Admit nothing more (a stop was requested): schedule() returns None once the running finish."""
        self._admitting = False

    def restore(self, partial: dict[int, list[int]], done: dict[int, list[int]]) -> None:
        """Before the first step, take over what an earlier run checkpointed (by seq id): `partial`
        sequences keep their generated tokens, recomputed with the prompt on admission as after a
        preemption; `done` sequences finished and never run."""
        if self.counters.steps or self._pending is not None:
            raise RuntimeError("restore() must come before the first step")
        for seq_id, tokens in (*partial.items(), *done.items()):
            seq = self.seq(seq_id)
            if seq.status is not SeqStatus.WAITING or seq.generated:
                raise ValueError(f"sequence {seq_id} was restored twice")
            seq.generated = list(tokens)
        for seq_id in done:
            self._retire(self._seqs[seq_id])
        self._waiting = deque(s for s in self._waiting if s.status is SeqStatus.WAITING)

    # ---- the loop -------------------------------------------------------------------------------
    def schedule(self) -> StepBatch | None:
        """The next step's work, or None when every sequence has finished (or, after stop_admitting(),
        every running one has)."""
        if self._pending is not None:
            raise RuntimeError("schedule() called before on_step_done() reported the previous step")
        if self._unfinished == 0 or not (self._admitting or self._running):
            return None
        self._admit()
        self._draft = StepDraft(self._cfg.token_budget)
        prefills: list[Sequence | SegmentJob] = []
        for item in list(self._running.values()):
            if isinstance(item, SegmentJob) or not item.decoding:
                prefills.append(item)
            elif item.status is SeqStatus.RUNNING:  # not preempted by an earlier decode's growth
                self._place_decode(item)
        for item in prefills:
            left = self._draft.left
            if left == 0:
                break
            if isinstance(item, SegmentJob):
                if item.job_id in self._running and self._ready(item.chain):
                    self._place_segment(item, min(item.length - item.computed, left))
            elif item.status is SeqStatus.RUNNING and item.known > item.computed and self._ready(item.chain):
                self._place_sequence(item, min(item.known - item.computed, left))
        return self._seal()

    def on_step_done(self, step: StepBatch, sampled: dict[int, int]) -> None:
        """Record a finished step: the token sampled for every `sample=True` chunk, by seq id."""
        if step is not self._pending:
            raise ValueError("on_step_done() got a step that is not the one last scheduled")
        want = {c.seq_id for c in step.chunks if c.sample}
        if set(sampled) != want:
            raise ValueError(f"sampled tokens for seq ids {sorted(sampled)}, expected exactly {sorted(want)}")
        for c in step.chunks:
            if c.sample:
                self._seqs[c.seq_id].generated.append(int(sampled[c.seq_id]))
            elif c.seq_id >= len(self._seqs):
                job = self._segs[c.seq_id - len(self._seqs)]
                if job.computed == job.length:
                    job.status = SegStatus.READY
                    del self._running[job.job_id]
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

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self) -> None:
        if not (self._waiting and self._admitting):
            return
        reserved = sum(self._reservation(s) for s in self._running.values() if isinstance(s, Sequence))
        while self._waiting and self._num_running_seqs < self._cfg.token_budget:
            seq = self._waiting[0]
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
        expected = max(self._estimator.expected(seq.group, seq.max_tokens), len(seq.generated) + 1)
        private = self._blocks(seq.prompt_len - seq.private_start + expected)
        return Candidate(seq.request, seq.request in self._running_requests, new // self._cfg.block_size, private)

    def _start(self, seq: Sequence) -> None:
        for g in seq.chain:
            seg = self._segs[g]
            if seg.status is SegStatus.UNALLOCATED:
                seg.blocks = tuple(self._pool.allocate(seg.length // self._cfg.block_size))
                seg.status = SegStatus.BUILDING
                self._running[seg.job_id] = seg
        seq.expected = max(self._estimator.expected(seq.group, seq.max_tokens), len(seq.generated) + 1)
        seq.status = SeqStatus.RUNNING
        self._running[seq.seq_id] = seq
        self._running_requests[seq.request] = self._running_requests.get(seq.request, 0) + 1
        self._num_running_seqs += 1

    def _reservation(self, seq: Sequence) -> int:
        return max(0, self._blocks(seq.prompt_len - seq.private_start + seq.expected) - len(seq.blocks))

    # ---- placing chunks -------------------------------------------------------------------------
    def _place_segment(self, job: SegmentJob, n: int) -> None:
        src = self._prompts[job.source]
        pos = job.start + job.computed
        job.computed += n
        blocks = job.blocks[: self._blocks(job.computed)]
        tokens = tuple(src[pos : pos + n].tolist())
        self._draft.add(SeqChunk(job.job_id, tokens, pos, job.start, blocks, job.chain, sample=False))

    def _place_sequence(self, seq: Sequence, n: int) -> None:
        if not self._grow(seq, self._blocks(seq.computed + n)):
            return
        pos = seq.private_start + seq.computed
        seq.computed += n
        prompt = self._prompts[seq.request]
        tokens = prompt[pos : min(pos + n, seq.prompt_len)].tolist()
        tokens += seq.generated[max(pos, seq.prompt_len) - seq.prompt_len : pos + n - seq.prompt_len]
        sample = seq.computed == seq.known
        chunk = SeqChunk(seq.seq_id, tuple(tokens), pos, seq.private_start, tuple(seq.blocks), seq.chain, sample)
        self._draft.add(chunk)

    def _place_decode(self, seq: Sequence) -> None:
        """The common case, kept lean: one generated token, a new block every block_size steps."""
        if seq.computed % self._cfg.block_size == 0 and not self._grow(seq, len(seq.blocks) + 1):
            return
        pos = seq.private_start + seq.computed
        seq.computed += 1
        chunk = SeqChunk(seq.seq_id, (seq.generated[-1],), pos, seq.private_start, tuple(seq.blocks), seq.chain, True)
        self._draft.add(chunk, decode=True)

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
                victim = self._newest_running(newer_than=seq)
                if victim is not None:
                    self._preempt(victim)
                elif any(isinstance(i, Sequence) and i is not seq for i in self._running.values()):
                    self._preempt(seq)
                    return False
                elif not self._evict_idle_segments():
                    raise KVBudgetError(self._too_small(seq, need)) from None
        return True

    def _newest_running(self, newer_than: Sequence) -> Sequence | None:
        for item in reversed(self._running.values()):
            if item is newer_than:
                return None
            if isinstance(item, Sequence):
                return item
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.counters.recomputed_tokens += seq.computed - self._draft.drop(seq.seq_id)
        self.counters.preemptions += 1
        self._stop_running(seq)
        seq.computed = 0
        seq.status = SeqStatus.WAITING
        self._waiting.appendleft(seq)

    def _stop_running(self, seq: Sequence) -> None:
        del self._running[seq.seq_id]
        self._num_running_seqs -= 1
        left = self._running_requests.pop(seq.request) - 1
        if left:
            self._running_requests[seq.request] = left
        self._pool.free(seq.blocks)
        seq.blocks = []

    def _evict_idle_segments(self) -> bool:
        """Last resort: drop the KV of segments no running sequence reads (recomputed when re-admitted)."""
        in_use = {g for s in self._running.values() if isinstance(s, Sequence) for g in s.chain}
        idle = [s for s in self._segs if s.status in (SegStatus.BUILDING, SegStatus.READY) and s.seg_id not in in_use]
        for seg in idle:
            self._draft.drop(seg.job_id)
            self._release_segment(seg, SegStatus.UNALLOCATED)
        self.counters.segment_evictions += len(idle)
        return bool(idle)

    def _release_segment(self, seg: SegmentJob, status: SegStatus) -> None:
        self._running.pop(seg.job_id, None)
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
        if self._shared_blocks(seq) + private > self._pool.num_total:
            raise KVBudgetError(self._too_small(seq, private))

    def _shared_blocks(self, seq: Sequence) -> int:
        return sum(self._segs[g].length for g in seq.chain) // self._cfg.block_size

    def _too_small(self, seq: Sequence, private_blocks: int) -> str:
        shared = self._shared_blocks(seq)
        return (
            f"KV budget too small: {self._pool.num_total} blocks of {self._cfg.block_size} tokens cannot hold "
            f"sequence {seq.seq_id} (request {seq.request}) alone: it needs {shared} shared + {private_blocks} "
            f"private blocks; raise the KV budget or lower max_tokens"
        )
