"""Self-distillation of early exits: the whole model teaches exits at several layers at once.

One teacher forward with ``output_hidden_states=True`` gives the hidden states after every layer, so every exit
trains from one teacher pass: the states at the exit layers and the teacher's final (normed) state are kept per
token position, and training draws batches of positions from them. The loss is KL(teacher || exit) of the
next-token distributions (with a temperature) at every position of every sequence; the norm and head stay frozen
and shared, only the adapters train.

Held-out figures per exit (:func:`evaluate_exits`): top-1 agreement with the whole model, NLL of the true next
token, and the calibration a cascade needs: the confidence threshold (max probability; entropy too) above which
the exit agrees with the whole model at least ``target`` of the time, and the share of positions it keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_lam.model.decompose import Architecture, Head
from edge_lam.model.exits import ExitHead, head_logits_over

__all__ = ["DistillSettings", "ExitScores", "TeacherStates", "calibrate", "evaluate_exits", "teacher_states",
           "train_exits"]


@dataclass(frozen=True)
class DistillSettings:
    """How exits are trained: adapter rank, optimizer steps, positions per step, learning rate, temperature."""

    rank: int = 64
    steps: int = 200
    batch_positions: int = 256
    lr: float = 1e-2
    temperature: float = 1.0
    extra_candidates: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class TeacherStates:
    """Per token position (every position that has a next token): the hidden states entering each exit, the
    teacher's final normed state, the true next token, the teacher's top tokens and its NLL of the true one."""

    exits: dict[int, torch.Tensor]  # layer -> [P, H]
    final: torch.Tensor             # [P, H], after the final norm
    next_ids: torch.Tensor          # [P]
    top_ids: torch.Tensor           # [P, k], most likely first
    nll: torch.Tensor               # [P], nats

    @property
    def positions(self) -> int:
        return int(self.next_ids.shape[0])

    def first(self, count: int) -> TeacherStates:
        """The first ``count`` positions alone (a cheaper look, e.g. at untrained exits)."""
        part = slice(0, count)
        return TeacherStates({k: v[part] for k, v in self.exits.items()}, self.final[part], self.next_ids[part],
                             self.top_ids[part], self.nll[part])

    def candidates(self, extra: int, seed: int = 0) -> torch.Tensor:
        """The tokens training computes logits for: every teacher top token and true next token, and ``extra``
        tokens drawn at random so that the exit also learns to keep the rest of the vocabulary down."""
        vocab = int(self.top_ids.max().clamp(min=self.next_ids.max())) + 1
        drawn = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:extra]
        return torch.unique(torch.cat([self.top_ids.reshape(-1), self.next_ids, drawn]))


@torch.inference_mode()
def teacher_states(arch: Architecture, sequences: Sequence[Sequence[int]], layers: Sequence[int],
                   batch_size: int = 8, top_k: int = 16) -> TeacherStates:
    """Run the whole model once over ``sequences`` (right-padded batches; attention is causal, so padding after a
    sequence changes none of its positions) and keep what every exit, the loss and the scores need."""
    if not sequences or any(len(s) < 2 for s in sequences):
        raise ValueError("need sequences of at least two tokens")
    if any(not 0 < layer < arch.num_layers for layer in layers):
        raise ValueError(f"exit layers {list(layers)} must lie in 1..{arch.num_layers - 1}")
    exits: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    finals, next_ids, top_ids, nll = [], [], [], []
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)  # positions that have a next token
        for row, sequence in enumerate(batch):
            ids[row, :len(sequence)] = torch.tensor(sequence)
            mask[row, :len(sequence) - 1] = True
        out = arch.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        # hidden_states[L] is the output of layer L-1; the last one has the final norm applied.
        for layer in layers:
            exits[layer].append(out.hidden_states[layer][mask].float())
        finals.append(out.hidden_states[-1][mask].float())
        wanted = ids[:, 1:][mask[:, :-1]]
        logits = out.logits[mask].float()
        next_ids.append(wanted)
        top_ids.append(logits.topk(top_k, dim=-1).indices)
        nll.append(F.cross_entropy(logits, wanted, reduction="none"))
    return TeacherStates({k: torch.cat(v) for k, v in exits.items()}, torch.cat(finals), torch.cat(next_ids),
                         torch.cat(top_ids), torch.cat(nll))


def _kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) over positions, scaled by T^2 (gradients keep their size across T)."""
    target = F.log_softmax(teacher / temperature, dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)
    return F.kl_div(log_q, target, log_target=True, reduction="batchmean") * temperature**2


def train_exits(arch: Architecture, exits: Sequence[ExitHead], states: TeacherStates, settings: DistillSettings,
                progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``exits`` (in place) on ``states``; return the summed KL per step. ``progress(step, kl)`` is called
    every tenth step.

    The KL is taken over the candidate tokens (:meth:`TeacherStates.candidates`), not the whole vocabulary: on
    the fleet's text they hold nearly all of the teacher's mass, and the head's matrix products, which are nearly
    all of a step's cost, shrink by the vocabulary's ratio. The held-out scores use the whole vocabulary.
    """
    head = Head(arch)
    vocab = states.candidates(settings.extra_candidates, settings.seed)
    parameters = [p for exit_head in exits for p in exit_head.adapter.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    for exit_head in exits:
        exit_head.train()
    for step in range(settings.steps):
        rows = torch.randint(states.positions, (min(settings.batch_positions, states.positions),),
                             generator=generator)
        with torch.no_grad():
            teacher = head_logits_over(head, states.final[rows].to(arch.dtype), vocab).float()
        loss = sum(_kl(teacher, e.logits_over(states.exits[e.layer][rows].to(arch.dtype), vocab).float(),
                       settings.temperature) for e in exits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step + 1) % 10 == 0:
            progress(step + 1, losses[-1])
    for exit_head in exits:
        exit_head.eval()
    return losses


@dataclass(frozen=True)
class ExitScores:
    """Held-out figures of one exit (see :class:`edge_lam.model.exits.ExitInfo`); ``kl`` over the whole
    vocabulary."""

    layer: int
    agreement: float
    nll: float
    kl: float
    threshold: float
    confident_share: float
    entropy_threshold: float
    entropy_share: float


def calibrate(confidence: torch.Tensor, agree: torch.Tensor, target: float, higher_is_confident: bool = True,
              min_positions: int = 20) -> tuple[float, float]:
    """The threshold that keeps the most positions while the kept ones agree at least ``target`` of the time, and
    the share kept. Kept: confidence >= threshold (or <= when lower means more confident, as with entropy).

    ``min_positions`` keeps a handful of lucky positions from setting a threshold. With no such threshold: +inf
    (or -inf) and share 0.
    """
    order = torch.argsort(confidence, descending=higher_is_confident, stable=True)
    hits = torch.cumsum(agree[order].double(), 0)
    rate = hits / torch.arange(1, len(order) + 1, dtype=torch.float64)
    ok = (rate >= target).nonzero()
    ok = ok[ok >= min_positions - 1]
    if len(ok) == 0:
        return (math.inf if higher_is_confident else -math.inf), 0.0
    last = int(ok.max())
    return float(confidence[order[last]]), (last + 1) / len(order)


@torch.inference_mode()
def evaluate_exits(arch: Architecture, exits: Sequence[ExitHead], states: TeacherStates, target: float = 0.95,
                   chunk: int = 512) -> list[ExitScores]:
    """Held-out figures of each exit over the whole vocabulary (the whole model's NLL is ``states.nll``)."""
    head = Head(arch)
    every = torch.arange(head.lm_head.out_features)
    sums = {e.layer: {"nll": 0.0, "kl": 0.0} for e in exits}
    agree: dict[int, list[torch.Tensor]] = {e.layer: [] for e in exits}
    max_p: dict[int, list[torch.Tensor]] = {e.layer: [] for e in exits}
    entropy: dict[int, list[torch.Tensor]] = {e.layer: [] for e in exits}
    for first in range(0, states.positions, chunk):
        part = slice(first, first + chunk)
        teacher = head_logits_over(head, states.final[part].to(arch.dtype), every).float()
        for e in exits:
            logits = e(states.exits[e.layer][part].to(arch.dtype)).float()
            log_q = F.log_softmax(logits, -1)
            agree[e.layer].append(logits.argmax(-1) == states.top_ids[part, 0])
            sums[e.layer]["nll"] += float(F.nll_loss(log_q, states.next_ids[part], reduction="sum"))
            sums[e.layer]["kl"] += float(_kl(teacher, logits, 1.0)) * len(logits)
            max_p[e.layer].append(log_q.max(-1).values.exp())
            entropy[e.layer].append(-(log_q.exp() * log_q).sum(-1))
    scores = []
    for e in exits:
        agreed = torch.cat(agree[e.layer])
        threshold, share = calibrate(torch.cat(max_p[e.layer]), agreed, target)
        e_threshold, e_share = calibrate(torch.cat(entropy[e.layer]), agreed, target, higher_is_confident=False)
        n = states.positions
        scores.append(ExitScores(e.layer, float(agreed.float().mean()), sums[e.layer]["nll"] / n,
                                 sums[e.layer]["kl"] / n, threshold, share, e_threshold, e_share))
    return scores
