"""Early exits: a small trained adapter in front of the model's own final norm and LM head, so the hidden states
coming out of layer L-1 give next-token logits without the layers above.

The adapter is a low-rank residual ``h + up(down(h))`` with ``up`` starting at zero: an untrained exit is the
"logit lens" (the final norm and head read the hidden states as they are), and training only has to learn the
correction. The norm and head are the model's own modules, frozen and shared (SmolLM2's head is the tied 49152x576
embedding matrix: an exit adds only its adapter's bytes where the embedding already is).

Trained exits are a prepared asset: one safetensors file per layer (adapter weights, JSON metadata: model, layer,
rank, training data and the measured figures) in the folder :func:`exits_dir` names, with the cache's ``.complete``
marker. ``edge-lam prepare`` trains SmolLM2's (see :mod:`edge_lam.training.distill`).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from edge_lam.assets.cache import EXIT_MODEL, EXITS_VERSION, AssetMissingError, exits_folder, is_complete
from edge_lam.model.decompose import Architecture, Head

__all__ = [
    "EXITS_FILE",
    "ExitHead",
    "ExitInfo",
    "LowRankResidual",
    "available_exits",
    "exit_file",
    "exit_table",
    "exits_dir",
    "head_logits_over",
    "load_exit",
    "save_exit",
]

EXITS_FILE = "exit_{layer}.safetensors"
_METADATA_KEY = "edge_lam_exit"


class LowRankResidual(nn.Module):
    """``h + up(down(h))``, ``up`` zero at first so the adapter starts as the identity."""

    def __init__(self, hidden_size: int, rank: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not 1 <= rank <= hidden_size:
            raise ValueError(f"exit adapter rank must be in [1, {hidden_size}], got {rank}")
        self.down = nn.Linear(hidden_size, rank, bias=False, dtype=dtype)
        self.up = nn.Linear(rank, hidden_size, bias=False, dtype=dtype)
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.down(hidden))


@dataclass(frozen=True)
class ExitInfo:
    """What a trained exit is and how well it matches the whole model on held-out text (its metadata).

    ``agreement``: share of held-out positions whose top-1 token is the whole model's; ``nll``: nats per token of
    the true next token (``whole_nll``: the whole model's, for reference); ``threshold``: the least max-probability at
    which the exit's confident positions agree with the whole model at least ``target_agreement`` of the time
    (``confident_share``: the share of positions at or above it); ``entropy_threshold`` / ``entropy_share``: the
    same with entropy (nats; confident at or below). A threshold of inf (-inf for entropy) means none reaches the
    target.
    """

    model: str
    layer: int
    rank: int
    hidden_size: int
    vocab_size: int
    adapter_bytes: int
    agreement: float = float("nan")
    nll: float = float("nan")
    whole_nll: float = float("nan")
    target_agreement: float = 0.95
    threshold: float = float("nan")
    confident_share: float = float("nan")
    entropy_threshold: float = float("nan")
    entropy_share: float = float("nan")
    logit_lens_agreement: float = float("nan")  # the same exit untrained: what training bought
    training: dict[str, str | int | float] = field(default_factory=dict)  # data, steps, seconds, positions

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ExitInfo:
        return ExitInfo(**json.loads(text))


class ExitHead(nn.Module):
    """An exit at ``layer``: adapter, then the model's final norm and LM head (shared with ``arch``, frozen).

    ``forward(hidden [B, T, H]) -> logits [B, T, V]``.
    """

    def __init__(self, arch: Architecture, layer: int, rank: int = 64) -> None:
        super().__init__()
        if not 0 < layer <= arch.num_layers:
            raise ValueError(f"an exit at layer {layer} is outside the model's 1..{arch.num_layers}")
        self.layer = layer
        self.adapter = LowRankResidual(arch.hidden_size, rank, arch.dtype)
        self.head = Head(arch)
        self.head.requires_grad_(False)

    @property
    def rank(self) -> int:
        return self.adapter.down.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter(hidden))

    def logits_over(self, hidden: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
        """Logits of the tokens ``vocab`` only: training on a candidate set costs a fraction of the full head."""
        return head_logits_over(self.head, self.head.norm(self.adapter(hidden)), vocab)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The exit's own weights (what is saved): never the shared norm or head."""
        return {name: p.detach().contiguous() for name, p in self.adapter.state_dict().items()}


def head_logits_over(head: Head, normed: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """``head``'s logits of the tokens ``vocab`` for hidden states that already went through the final norm."""
    bias = head.lm_head.bias
    logits = F.linear(normed, head.lm_head.weight[vocab], None if bias is None else bias[vocab])
    return torch.tanh(logits / head.softcap) * head.softcap if head.softcap else logits


def exits_dir(model: str | Architecture) -> pathlib.Path:
    """The cache folder of a model's exits: a model id (``smollm2-135m-instruct``), a model folder or an
    Architecture (keyed by the folder it was loaded from)."""
    if isinstance(model, Architecture):
        model = str(model.model.name_or_path or "")
        if not model:
            raise ValueError("the model was not loaded from a folder: name the exits' folder explicitly")
    return exits_folder(model)


def exit_file(folder: pathlib.Path, layer: int) -> pathlib.Path:
    return folder / EXITS_FILE.format(layer=layer)


def save_exit(head: ExitHead, info: ExitInfo, folder: pathlib.Path) -> pathlib.Path:
    """Write the adapter and its metadata as ``exit_<layer>.safetensors`` in ``folder``."""
    if info.layer != head.layer or info.rank != head.rank:
        raise ValueError(f"metadata for exit {info.layer} (rank {info.rank}) given to exit {head.layer} "
                         f"(rank {head.rank})")
    path = exit_file(folder, head.layer)
    save_file(head.adapter_state(), str(path), metadata={_METADATA_KEY: info.to_json()})
    return path


def _read_info(path: pathlib.Path) -> ExitInfo:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    if _METADATA_KEY not in metadata:
        raise ValueError(f"{path} holds no edge_lam exit metadata")
    return ExitInfo.from_json(metadata[_METADATA_KEY])


def available_exits(model: str | Architecture, folder: pathlib.Path | None = None) -> dict[int, ExitInfo]:
    """The trained exits of a model, by layer ({} when none are prepared)."""
    folder = folder or exits_dir(model)
    if not is_complete(folder):
        return {}
    infos = (_read_info(path) for path in folder.glob(EXITS_FILE.format(layer="*")))
    return {info.layer: info for info in sorted(infos, key=lambda i: i.layer)}


def load_exit(arch: Architecture, layer: int, folder: pathlib.Path | None = None) -> ExitHead:
    """The trained exit at ``layer`` of ``arch``'s model, sharing its norm and head.

    AssetMissingError (naming the command that prepares it) when no exit was trained there; ValueError when the
    exit was trained for a model of other sizes.
    """
    folder = folder or exits_dir(arch)
    path = exit_file(folder, layer)
    if not is_complete(folder) and folder.name != exits_folder(EXIT_MODEL).name:
        model = folder.name.removesuffix(f"-exits-{EXITS_VERSION}")
        raise AssetMissingError(f"{model} has no early exits: they are trained only for {EXIT_MODEL} (by "
                                "`edge-lam prepare`); serve it without an exit module (policy chain)")
    if not (is_complete(folder) and path.is_file()):
        trained = sorted(available_exits(arch, folder))
        raise AssetMissingError(
            f"no exit at layer {layer} in {folder} (trained: {trained or 'none'}); run `edge-lam prepare` "
            "(or `make setup`) to train the exits"
        )
    info = _read_info(path)
    vocab = arch.model.get_output_embeddings().out_features
    if (info.hidden_size, info.vocab_size) != (arch.hidden_size, vocab):
        raise ValueError(f"{path} was trained for hidden {info.hidden_size} / vocabulary {info.vocab_size}, the "
                         f"model has {arch.hidden_size} / {vocab}")
    head = ExitHead(arch, layer, info.rank)
    head.adapter.load_state_dict({k: v.to(arch.dtype) for k, v in load_file(str(path)).items()})
    return head.eval()


def exit_table(infos: dict[int, ExitInfo]) -> str:
    """The per-layer figures a user picks an exit by, as a Markdown table."""
    rows = ["| exit layer | top-1 agreement | untrained (logit lens) | NLL (nats/token) | whole model NLL | "
            "max-prob threshold | confident share | entropy threshold | confident share (entropy) | adapter |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for layer, info in sorted(infos.items()):
        rows.append(f"| {layer} | {info.agreement:.3f} | {info.logit_lens_agreement:.3f} | {info.nll:.2f} | "
                    f"{info.whole_nll:.2f} | {info.threshold:.3f} | {info.confident_share:.3f} | "
                    f"{info.entropy_threshold:.3f} | {info.entropy_share:.3f} | rank {info.rank}, "
                    f"{info.adapter_bytes / 1024:.0f} KiB |")
    return "\n".join(rows)
