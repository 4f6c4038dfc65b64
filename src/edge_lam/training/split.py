"""Split fine-tuning: the robot runs the bottom of the model, the edge the top and the loss.

:class:`SplitBottom` (robot) holds the token embedding and decoder layers ``[0, cut)``; :class:`SplitTop` (edge)
holds layers ``[cut, N)``, the final norm and the LM head. Both are built from the modules of
:mod:`edge_lam.model.decompose`, so the split is read off the model's architecture and the two halves together
compute exactly what the whole model does. With :class:`~edge_lam.training.adapters.LoraSettings` each half trains
LoRA adapters on a frozen base (split LoRA); without, each trains every weight of its own layers (plain split
learning). The embedding, final norm and head stay frozen either way: in most small models the embedding and the
head are one tied matrix, which cannot be trained on two hosts at once.

One step: ``activation = bottom.forward(input_ids)`` goes up, ``loss, grad = top.step(activation, targets)``
trains the top and sends ``grad`` down, ``bottom.backward(grad)`` trains the bottom. A node only has to move those
tensors (through a codec of :mod:`edge_lam.training.compression`).

Batches are right-padded and need no attention mask: attention is causal, so no real token ever sees the padding
after it, and padded positions carry no loss. ``targets[b, t]`` is the token position ``t`` must predict, or
:data:`IGNORE`; only answer tokens get a target, so the loss is on answers alone and the head runs only there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_lam.model.decompose import Architecture, BlockRange, Embedding, Head
from edge_lam.training.adapters import LoraSettings, add_lora, load_trainable_state, trainable_state

__all__ = ["IGNORE", "AnswerScores", "SplitBottom", "SplitTop", "answer_loss", "answer_scores", "positions_for"]

IGNORE = -100  # the target of a position that carries no loss (prompt, padding)


@dataclass(frozen=True)
class AnswerScores:
    """Held-out figures summed over batches: answer-token negative log-likelihood and exact answers.

    An answer is exact when the argmax at each of its positions is the right token: with the right prefix fed at
    every step (teacher forcing) this is exactly when greedy decoding would write the whole answer, end token
    included.
    """

    nll_sum: float = 0.0
    tokens: int = 0
    exact: int = 0
    examples: int = 0

    def __add__(self, other: AnswerScores) -> AnswerScores:
        return AnswerScores(self.nll_sum + other.nll_sum, self.tokens + other.tokens, self.exact + other.exact,
                            self.examples + other.examples)

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per answer token (nats)."""
        return self.nll_sum / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def exact_match(self) -> float:
        return self.exact / self.examples if self.examples else math.nan


def positions_for(input_ids: torch.Tensor) -> torch.Tensor:
    """Positions 0..L-1 for every row of a right-padded batch."""
    batch, length = input_ids.shape
    return torch.arange(length, device=input_ids.device).expand(batch, length)


def _answer_logits(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = targets != IGNORE
    if not mask.any():
        raise ValueError("the batch has no answer tokens: every target is IGNORE")
    return head(hidden[mask]), targets[mask]


def answer_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens; the head runs only at those positions."""
    logits, wanted = _answer_logits(head, hidden, targets)
    return F.cross_entropy(logits.float(), wanted)


@torch.no_grad()
def answer_scores(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> AnswerScores:
    """The held-out figures of one batch (see :class:`AnswerScores`)."""
    logits, wanted = _answer_logits(head, hidden, targets)
    nll = F.cross_entropy(logits.float(), wanted, reduction="sum")
    mask = targets != IGNORE
    rows = mask.nonzero()[:, 0]
    wrong = torch.zeros(targets.shape[0]).index_add_(0, rows, (logits.argmax(-1) != wanted).float())
    answered = mask.any(dim=1)
    return AnswerScores(float(nll), int(mask.sum()), int(((wrong == 0) & answered).sum()), int(answered.sum()))


class _TrainedRange:
    """A block range that trains either LoRA adapters or all of its weights, with its own optimizer."""

    def __init__(self, arch: Architecture, start: int, end: int, lora: LoraSettings | None, lr: float,
                 seed: int) -> None:
        for parameter in arch.model.parameters():  # the shared base: embedding, norm, head, the source layers
            parameter.requires_grad_(False)
        self.blocks = BlockRange(arch, start, end)  # owns copies of its layers
        self.first_layer = start
        self.lr = lr
        if lora is None:
            self.blocks.layers.requires_grad_(True)
        else:
            add_lora(self.blocks.layers, lora, seed)
        self.parameters = [p for p in self.blocks.layers.parameters() if p.requires_grad]
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters, lr=self.lr, weight_decay=0.0)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What this side sends for averaging: its adapters (LoRA) or its layers' weights (plain)."""
        return trainable_state(self.blocks.layers, self.first_layer)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take merged weights; the optimizer starts afresh from them, as a FedAvg client does each round."""
        load_trainable_state(self.blocks.layers, self.first_layer, state)
        self.optimizer = self._new_optimizer()

    def run_blocks(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # A fresh cache per call: BlockRange is written for decoding with a cache; here it only holds this pass.
        return self.blocks(hidden, positions, self.blocks.new_cache())


class SplitBottom(_TrainedRange):
    """The robot's half: token embedding (frozen) and layers ``[0, cut)``; token ids in, activations out.

    Building it freezes every weight of ``arch.model`` (the halves share its embedding, norm and head).
    """

    def __init__(self, arch: Architecture, cut: int, lora: LoraSettings | None = None, lr: float = 1e-3,
                 seed: int = 0) -> None:
        if not 0 < cut < arch.num_layers:
            raise ValueError(f"cut {cut} must leave layers on both sides: 0 < cut < {arch.num_layers}")
        super().__init__(arch, 0, cut, lora, lr, seed)
        self.embedding = Embedding(arch)
        # The last activation sent, with its graph, until its gradient comes; public so that a caller that must
        # undo a forward (a global adapter it cannot train from) can put the previous one back.
        self.pending: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The activation at the cut [B, L, hidden] to send up; the graph behind it is kept for :meth:`backward`."""
        positions = positions_for(input_ids)
        output = self.run_blocks(self.embedding(input_ids, positions), positions)
        self.pending = output if output.requires_grad else None
        return output.detach()

    def backward(self, grad: torch.Tensor) -> None:
        """Back-propagate the gradient of the loss with respect to the last activation sent, and take a step."""
        if self.pending is None:
            raise RuntimeError("backward needs a forward with gradients enabled before it")
        if tuple(grad.shape) != tuple(self.pending.shape):
            raise ValueError(f"gradient of shape {tuple(grad.shape)} for an activation of {tuple(self.pending.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.backward(grad.to(self.pending.dtype))
        self.optimizer.step()
        self.pending = None


class SplitTop(_TrainedRange):
    """The edge's half: layers ``[cut, N)``, final norm and head (frozen) and the loss on answer tokens."""

    def __init__(self, arch: Architecture, cut: int, lora: LoraSettings | None = None, lr: float = 1e-3,
                 seed: int = 0) -> None:
        if not 0 < cut < arch.num_layers:
            raise ValueError(f"cut {cut} must leave layers on both sides: 0 < cut < {arch.num_layers}")
        super().__init__(arch, cut, arch.num_layers, lora, lr, seed)
        self.head = Head(arch)
        self.dtype = arch.dtype

    def step(self, activation: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Train on one batch: the loss, and its gradient with respect to ``activation`` to send down."""
        x = activation.detach().to(self.dtype).requires_grad_(True)
        loss = answer_loss(self.head, self.run_blocks(x, positions_for(targets)), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Finite activations can still overflow inside the blocks; a step on inf or NaN would ruin the top for every
        # robot, and the gradient could not be sent, so such a batch is refused before the step.
        if not (torch.isfinite(loss) and torch.isfinite(x.grad).all()):
            self.optimizer.zero_grad(set_to_none=True)
            raise ValueError(f"the loss ({float(loss.detach()):.3g}) or its gradient is not finite: "
                             "batch not trained on")
        self.optimizer.step()
        return float(loss.detach()), x.grad

    @torch.no_grad()
    def evaluate(self, activation: torch.Tensor, targets: torch.Tensor) -> AnswerScores:
        """Held-out figures of one batch; nothing is trained."""
        return answer_scores(self.head, self.run_blocks(activation.to(self.dtype), positions_for(targets)), targets)
