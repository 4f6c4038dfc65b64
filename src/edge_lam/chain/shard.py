"""The pure core of a shard: a contiguous run of modules (embedding, block ranges, an early exit, head) and their
sessions.

One call of :meth:`ShardCore.step` takes the tensors of one packet and returns the tensors to send on (and an early
exit's answer), so the node around it only converts messages. Sessions are checked out of every block range before
anything is computed, and a step that fails drops the session in all of them: the gateway then replays it from its
tokens. A verification step carries drafts (``draft_ids``) past every module to the head, which keeps those the
whole model agrees with (:func:`~edge_lam.model.sampling.verify_tokens`); the next step truncates the caches past
them.

Bounds: a step that would take a session past ``max_context_tokens`` is refused (BadInput, before any compute), and
after each step the least recently used sessions are dropped while there are more than ``max_sessions`` or their
caches hold more than ``max_kv_bytes``; a dropped session asked again is lost (SessionLost) and the gateway replays
it. The three may be changed between steps.

Batching: :meth:`ShardCore.step_batch` runs plain steps of several sessions (no reset or verification, the chain
route; :meth:`ShardCore.batch_key` says which may go together) through one forward, so the weights are read once per
step for all of them: their caches are stacked left-padded (``model.batched_cache``) and each session's new keys and
values go back into its own cache once every module has run. Each packet is checked before, and fails alone; if the
batched forward raises, its steps run again one by one (the sessions' caches are untouched until then).
:func:`batches` groups packets waiting at a shard without reordering any session's own packets.

LoRA adapters (:mod:`edge_lam.model.adapters`) given at construction are applied to the shard's own layers, each
under its name; a step names the one it runs with (``adapter``, empty for the base weights; part of the batch key:
a batch runs one adapter), and naming one the shard does not hold is BadInput.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from edge_lam.chain.requests import DRAFTS, Route
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.adapters import Adapter, apply_adapters, select_adapter
from edge_lam.model.batched_cache import stack_caches, unstack_caches
from edge_lam.model.costs import module_cost
from edge_lam.model.decompose import Architecture, BlockRange, Embedding, Head, build_module, describe
from edge_lam.model.precision import Int8Linear
from edge_lam.model.sampling import Sampling, choose_token, verify_tokens
from edge_lam.model.sessions import Session, SessionStore

__all__ = ["BadInput", "BatchResult", "ShardCore", "Step", "StepOutput", "batches"]

Item = TypeVar("Item")


class BadInput(ValueError):
    """The packet's tensors do not fit the shard's first module."""


@dataclass
class StepOutput:
    """What one packet gave: tensors for the next module (None when the step ended at the early exit), the exit's
    answer (``next_token`` int64 [1] and ``confidence`` float32 [1], its probability) if it was asked, and the
    seconds each module took."""

    tensors: dict[str, torch.Tensor] | None
    exit: dict[str, torch.Tensor] | None
    timings: list[tuple[str, float]]
    dropped: list[str] = field(default_factory=list)  # sessions dropped to stay within the bounds


@dataclass(frozen=True)
class Step:
    """One packet's step: the arguments of :meth:`ShardCore.step` (``step`` is the request step, which seeds
    sampling)."""

    tensors: dict[str, torch.Tensor]
    session_id: str
    position: int
    sampling: Sampling = field(default_factory=Sampling)
    step: int = 0
    reset: bool = False
    truncate: bool = False
    verify: bool = False
    route: int = Route.CHAIN
    adapter: str = ""  # the LoRA adapter to run with; empty: none


@dataclass
class BatchResult:
    """What :meth:`ShardCore.step_batch` gave: per step, in order, its output or the error it fails with; how many
    steps ran in the batched forward (0 when fewer than two passed their checks, or it failed); and why it failed
    (its steps then ran alone)."""

    outputs: list[StepOutput | Exception]
    batched: int
    error: Exception | None = None


class ShardCore:
    """Runs modules ``specs`` (contiguous, in chain order) of ``model`` on one packet at a time."""

    def __init__(self, model: torch.nn.Module, specs: list[ModuleSpec], idle_timeout_s: float = 600.0, *,
                 max_context_tokens: int = 2048, max_sessions: int = 64, max_kv_bytes: int = 512 * 2**20,
                 adapters: Mapping[str, Adapter] | None = None) -> None:
        _check_contiguous(specs)
        arch = describe(model)
        if specs[-1].kind == "blocks" and specs[-1].layer_end > arch.num_layers:
            raise ValueError(f"the model has {arch.num_layers} layers, the shard asks for {specs[-1].module_id}")
        self.specs = specs
        self.hidden_size = arch.hidden_size
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.dtype = arch.dtype
        self.modules = [build_module(arch, spec, share_weights=True) for spec in specs]
        self.sessions = [
            SessionStore(m.new_cache, idle_timeout_s, kv_bytes_for=_kv_bytes_counter(m, arch, spec))
            if isinstance(m, BlockRange) else None for m, spec in zip(self.modules, specs, strict=True)
        ]
        self.max_context_tokens = max_context_tokens
        self.max_sessions = max_sessions
        self.max_kv_bytes = max_kv_bytes
        self.batchable = all(m.batchable for m in self.modules if isinstance(m, BlockRange))
        adapters = adapters or {}
        for adapter in adapters.values():
            adapter.check_fits(arch)  # the whole file, not only this shard's layers: a wrong model shows everywhere
        self.adapters = tuple(sorted(adapters))
        self.adapted_layers = sum(apply_adapters(m, spec.layer_start, adapters) for m, spec
                                  in zip(self.modules, specs, strict=True) if isinstance(m, BlockRange))
        self._adapter = ""  # the one the LoRA layers run with now

    @property
    def session_count(self) -> int:
        return len({sid for store in self.sessions if store is not None for sid in store.least_recent()})

    @property
    def kv_bytes(self) -> int:
        """KV-cache bytes the shard's sessions hold (what ``max_kv_bytes`` bounds)."""
        return sum(store.kv_bytes for store in self.sessions if store is not None)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights the shard's modules hold (int8 ones are buffers; a tensor two modules share counted
        once)."""
        tensors = [*(p for m in self.modules for p in m.parameters()),
                   *(b for m in self.modules for q in m.modules() if isinstance(q, Int8Linear) for b in q.buffers())]
        unique = {t.data_ptr(): t for t in tensors if t.device.type != "meta"}
        return sum(t.numel() * t.element_size() for t in unique.values())

    def kv_bytes_for(self, tokens: int) -> int:
        """KV-cache bytes one session of ``tokens`` holds here (a sliding-window layer holds its window at most)."""
        return sum(store.kv_bytes_for(tokens) for store in self.sessions if store is not None)

    def set_idle_timeout(self, seconds: float) -> None:
        for store in self.sessions:
            if store is not None:
                store.idle_timeout_s = seconds

    @property
    def module_ids(self) -> list[str]:
        return [s.module_id for s in self.specs]

    @property
    def input_name(self) -> str:
        return "input_ids" if isinstance(self.modules[0], Embedding) else "hidden_states"

    @property
    def output_name(self) -> str:
        return "next_token" if isinstance(self.modules[-1], Head) else "hidden_states"

    @property
    def has_exit(self) -> bool:
        return any(spec.kind == "exit" for spec in self.specs)

    @torch.inference_mode()
    def step(self, tensors: dict[str, torch.Tensor], session_id: str, position: int, reset: bool,
             sampling: Sampling, step: int, truncate: bool = False, verify: bool = False,
             route: int = Route.CHAIN, adapter: str = "") -> StepOutput:
        """Run the modules on one packet (truncating the caches to ``position`` first if asked) with LoRA adapter
        ``adapter`` (empty: none)."""
        packet = Step(tensors, session_id, position, sampling, step, reset, truncate, verify, route, adapter)
        x, drafts = self._check(packet)
        self.use_adapter(adapter)
        length = x.shape[1]
        position_ids = torch.arange(position, position + length).unsqueeze(0)
        timings, exit_answer = [], None
        try:
            checked_out = self._checkout(packet)
            for spec, module, session in zip(self.specs, self.modules, checked_out, strict=True):
                start = time.perf_counter()
                if isinstance(module, Embedding):
                    x = module(x, position_ids)
                elif isinstance(module, BlockRange):
                    x = module(x, position_ids, session.cache)
                    session.length += length
                elif spec.kind == "exit":
                    if route == Route.CHAIN or verify:
                        continue  # nobody asked: the hidden states pass through untouched
                    exit_answer = self._exit_answer(module(x[:, -1:])[0, -1], sampling, step)
                    timings.append((spec.module_id, time.perf_counter() - start))
                    if route == Route.EXIT:
                        return StepOutput(None, exit_answer, timings)
                    continue
                elif drafts is not None:
                    logits = module(x[:, -(len(drafts) + 1):])[0]
                    x = torch.tensor(verify_tokens(logits, drafts, sampling, step), dtype=torch.int64)
                    drafts = None
                else:
                    logits = module(x[:, -1:])[0, -1]
                    x = torch.tensor([choose_token(logits, sampling.do_sample, sampling.temperature,
                                                   sampling.top_p, sampling.seed, step)], dtype=torch.int64)
                timings.append((spec.module_id, time.perf_counter() - start))
        except Exception:
            self.release(session_id)  # lost or half extended somewhere: the session must be replayed in full
            raise
        out = {self.output_name: x}
        if drafts is not None:  # the head is further down the chain: the drafts travel on to it
            out[DRAFTS] = torch.tensor([drafts], dtype=torch.int64)
        return StepOutput(out, exit_answer, timings, self.evict(keep=session_id))

    def batch_key(self, packet: Step) -> Hashable | None:
        """What steps must share to run as one batch; None for a step that runs alone (a reset, a verification,
        a route to an early exit, or a model whose caches cannot be batched). A step whose input is missing or
        malformed gets a key of its own kind: :meth:`step_batch` checks it and fails it alone."""
        if not self.batchable or packet.reset or packet.verify or packet.route != Route.CHAIN:
            return None
        x = packet.tensors.get(self.input_name)
        # tokens: every row of a batch has as many; the adapter: the LoRA layers run one at a time
        return (x.shape[1], packet.adapter) if x is not None and x.dim() >= 2 else None

    @torch.inference_mode()
    def step_batch(self, packets: Sequence[Step]) -> BatchResult:
        """Run steps of different sessions with one :meth:`batch_key` as one batch; each step's output as if it
        had run alone. A step whose input or session is bad fails alone; if the batched forward raises, the steps
        run again one by one."""
        keys = {self.batch_key(p) for p in packets}
        if len({p.session_id for p in packets}) != len(packets) or None in keys or len(keys) > 1:
            raise ValueError("a batch takes steps of one batch key (not None), one per session")
        outputs: list[StepOutput | Exception | None] = [None] * len(packets)
        ready: list[tuple[int, torch.Tensor, list[Session | None]]] = []
        for index, packet in enumerate(packets):
            try:
                x, _ = self._check(packet)
                ready.append((index, x, self._checkout(packet)))
            except Exception as err:  # BadInput, SessionLost, or a bug: this step's answer alone
                outputs[index] = err
        error = None
        if len(ready) >= 2:
            try:
                done = self._forward_batch([packets[i] for i, _, _ in ready], [x for _, x, _ in ready],
                                           [sessions for _, _, sessions in ready])
            except Exception as err:  # memory, or a bug: the sessions are as they were, each step runs alone
                error = err
            else:
                for (index, _, _), output in zip(ready, done, strict=True):
                    outputs[index] = output
                outputs[ready[-1][0]].dropped = self.evict(keep=packets[ready[-1][0]].session_id)
        if len(ready) < 2 or error is not None:
            for index, _, _ in ready:
                outputs[index] = self._alone(packets[index])
        return BatchResult(outputs, len(ready) if len(ready) >= 2 and error is None else 0, error)

    def _forward_batch(self, packets: list[Step], inputs: list[torch.Tensor], sessions: list[list[Session | None]]
                       ) -> list[StepOutput]:
        """The modules on the stacked inputs; the sessions' caches take their rows only once all have run."""
        self.use_adapter(packets[0].adapter)  # one batch key: one adapter
        length = inputs[0].shape[1]
        x = torch.cat(inputs)
        position_ids = torch.tensor([[p.position] for p in packets]) + torch.arange(length)
        timings, batched_caches = [], []
        for index, (spec, module) in enumerate(zip(self.specs, self.modules, strict=True)):
            start = time.perf_counter()
            if isinstance(module, Embedding):
                x = module(x, position_ids)
            elif isinstance(module, BlockRange):
                caches, lengths = [s[index].cache for s in sessions], [s[index].length for s in sessions]
                cache, mask = stack_caches(caches, lengths, length, module.new_cache)
                x = module(x, position_ids, cache, mask)
                batched_caches.append((index, cache, lengths))
            elif spec.kind == "exit":
                continue  # only chain steps batch: nobody asked the exit
            else:
                logits = module(x[:, -1:])[:, -1]
                x = torch.tensor([_choose(row, p) for row, p in zip(logits, packets, strict=True)], dtype=torch.int64)
            timings.append((spec.module_id, time.perf_counter() - start))
        for index, cache, lengths in batched_caches:
            unstack_caches(cache, [s[index].cache for s in sessions], [n + length for n in lengths])
            for s in sessions:
                s[index].length += length
        return [StepOutput({self.output_name: x[row:row + 1]}, None, list(timings)) for row in range(len(packets))]

    def _alone(self, packet: Step) -> StepOutput | Exception:
        try:
            return self.step(packet.tensors, packet.session_id, packet.position, packet.reset, packet.sampling,
                             packet.step, packet.truncate, packet.verify, packet.route, packet.adapter)
        except Exception as err:
            return err

    def _check(self, packet: Step) -> tuple[torch.Tensor, list[int] | None]:
        """The packet's input (and drafts, for a verification), refused with BadInput before any compute when it
        is malformed or would take its session past the shard's bounds."""
        if packet.route not in iter(Route):
            raise BadInput(f"route {packet.route} is not one of {[int(r) for r in Route]}")
        if packet.adapter and packet.adapter not in self.adapters:
            raise BadInput(f"adapter '{packet.adapter}' is not held here (held: {list(self.adapters) or 'none'}; a "
                           "shard's `adapters` parameter names them)")
        x = self._input(packet.tensors)
        length, position = x.shape[1], packet.position
        if position + length > self.max_context_tokens:
            raise BadInput(f"{length} tokens at position {position} exceed the shard's max_context_tokens "
                           f"{self.max_context_tokens}")
        if self.kv_bytes_for(position + length) > self.max_kv_bytes:
            raise BadInput(f"a session of {position + length} tokens would hold "
                           f"{self.kv_bytes_for(position + length)} KV bytes, more than max_kv_bytes "
                           f"{self.max_kv_bytes}")
        return x, self._drafts(packet.tensors, length) if packet.verify else None

    def use_adapter(self, adapter: str) -> None:
        """Run the LoRA layers with ``adapter`` (one the shard holds; empty: the base weights) from now on."""
        if adapter != self._adapter:
            select_adapter((m for m in self.modules if isinstance(m, BlockRange)), adapter)
            self._adapter = adapter

    def _checkout(self, packet: Step) -> list[Session | None]:
        """The packet's session in every block range; a session lost in one is dropped in all."""
        try:
            return [store.checkout(packet.session_id, packet.position, packet.reset, packet.truncate)
                    if store is not None else None for store in self.sessions]
        except Exception:
            self.release(packet.session_id)
            raise

    def evict(self, keep: str = "") -> list[str]:
        """Drop the least recently used sessions (never ``keep``) until the shard is within its bounds."""
        dropped = []
        while self.session_count > self.max_sessions or self.kv_bytes > self.max_kv_bytes:
            oldest = next((sid for store in self.sessions if store is not None for sid in store.least_recent()
                           if sid != keep), None)
            if oldest is None:
                break
            self.release(oldest)
            dropped.append(oldest)
        return dropped

    @staticmethod
    def _exit_answer(logits: torch.Tensor, sampling: Sampling, step: int) -> dict[str, torch.Tensor]:
        token = choose_token(logits, sampling.do_sample, sampling.temperature, sampling.top_p, sampling.seed, step)
        confidence = torch.softmax(logits.float(), dim=-1)[token]
        return {"next_token": torch.tensor([token], dtype=torch.int64),
                "confidence": confidence.reshape(1).to(torch.float32)}

    def release(self, session_id: str) -> None:
        for store in self.sessions:
            if store is not None:
                store.drop(session_id)

    def expire(self) -> list[str]:
        """Drop idle sessions in every block range; return the ids dropped."""
        return sorted({sid for store in self.sessions if store is not None for sid in store.expire()})

    def _drafts(self, tensors: dict[str, torch.Tensor], length: int) -> list[int]:
        drafts = tensors.get(DRAFTS)
        if drafts is None:
            raise BadInput(f"a verification step needs a tensor named '{DRAFTS}', got {sorted(tensors)}")
        if drafts.dtype != torch.int64 or drafts.dim() != 2 or drafts.shape[0] != 1 or drafts.shape[1] >= length:
            raise BadInput(f"{DRAFTS} must be int64 [1, D] with D below the step's {length} tokens, got "
                           f"{str(drafts.dtype)[6:]} {list(drafts.shape)}")
        if drafts.numel() and (int(drafts.min()) < 0 or int(drafts.max()) >= self.vocab_size):
            raise BadInput(f"{DRAFTS} must lie in [0, {self.vocab_size}), got [{int(drafts.min())}, "
                           f"{int(drafts.max())}]")
        return drafts[0].tolist()

    def _input(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        name = self.input_name
        x = tensors.get(name)
        if x is None:
            raise BadInput(f"expected a tensor named '{name}', got {sorted(tensors)}")
        if name == "input_ids":
            if x.dtype != torch.int64 or x.dim() != 2 or x.shape[0] != 1 or x.shape[1] == 0:
                raise BadInput(f"input_ids must be int64 [1, T>0], got {str(x.dtype)[6:]} {list(x.shape)}")
            if int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
                raise BadInput(f"input_ids must lie in [0, {self.vocab_size}), got [{int(x.min())}, {int(x.max())}]")
            return x
        if not x.is_floating_point() or x.dim() != 3 or x.shape[0] != 1 or x.shape[1] == 0 \
                or x.shape[2] != self.hidden_size:
            raise BadInput(
                f"hidden_states must be floating [1, T>0, {self.hidden_size}], got {str(x.dtype)[6:]} {list(x.shape)}"
            )
        x = x.to(self.dtype)
        if not bool(torch.isfinite(x).all()):  # NaN or inf would spread through every later position's attention
            raise BadInput("hidden_states hold NaN or infinite values")
        return x


def _kv_bytes_counter(module: BlockRange, arch: Architecture, spec: ModuleSpec) -> Callable[[int], int]:
    """The KV bytes a session of n tokens holds in ``module``: one token of one layer times the tokens its layers
    hold (all of them, or a sliding window's)."""
    per_layer_token = module_cost(arch, spec).kv_bytes_per_token // len(module.layers)
    return lambda tokens: per_layer_token * module.held_tokens(tokens)


def _choose(logits: torch.Tensor, packet: Step) -> int:
    """The next token from one row's logits, by that row's own sampling options and step."""
    options = packet.sampling
    return choose_token(logits, options.do_sample, options.temperature, options.top_p, options.seed, packet.step)


def batches(items: Sequence[Item], session: Callable[[Item], str], key: Callable[[Item], Hashable | None],
            max_size: int) -> list[list[Item]]:
    """``items`` (in arrival order) in the groups to run, in order: a batch of up to ``max_size`` items of one key
    (not None), one per session, or an item alone. An item joins a batch ahead of earlier items of other sessions,
    never of its own: a session's packets run in the order they came."""
    keyed = [(item, key(item)) for item in items]
    groups = []
    while keyed:
        (first, first_key), rest = keyed[0], keyed[1:]
        group, keyed, passed = [first], [], {session(first)}  # passed: sessions with an item left behind or taken
        for item, item_key in rest:
            if first_key is not None and len(group) < max_size and item_key == first_key \
                    and session(item) not in passed:
                group.append(item)
            else:
                keyed.append((item, item_key))
            passed.add(session(item))
        groups.append(group)
    return groups


def _check_contiguous(specs: list[ModuleSpec]) -> None:
    if not specs:
        raise ValueError("a shard needs at least one module")
    if not all(s.in_text_chain or s.kind == "exit" for s in specs):
        raise ValueError("a shard runs embedding, blocks, exits and head only: the projector feeds a chain from sensor "
                         "tokens, and encoders are nodes of their own")
    for before, after in itertools.pairwise(specs):
        if not after.follows(before):
            raise ValueError(f"modules {before.module_id} and {after.module_id} do not follow each other")
