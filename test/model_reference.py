"""What the whole model answers, computed in the test process: the reference every split or failed-over chain must
match token for token."""

from __future__ import annotations

import torch

from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.training.adapters import LoraSettings
from edge_lam.training.split_parameters import ALL_LINEAR

MODEL = "smollm2-135m-instruct"
LORA = LoraSettings(rank=8, alpha=16.0, target_modules=tuple(ALL_LINEAR))  # the trainers' defaults
CUT = 4  # the trainers' default cut_layer


def prompt_ids(prompt: str, model_id: str = MODEL) -> torch.Tensor:
    """The prompt's token ids [1, T], wrapped in the chat template as the gateway does (a model without one, such as
    base Gemma, gets the prompt as plain text, as the gateway gives it)."""
    tokenizer = load_tokenizer(model_id)
    if tokenizer.chat_template is None:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def greedy_tokens(prompts: list[str], max_new_tokens: int, model_id: str = MODEL) -> dict[str, list[int]]:
    """Greedy new token ids of the whole model for each prompt, its ids as :func:`prompt_ids` makes them."""
    model = load_model(model_id)
    answers = {}
    for prompt in prompts:
        ids = prompt_ids(prompt, model_id)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers[prompt] = out[0, ids.shape[1]:].tolist()
    return answers


class TrainedAdapter:
    """The training code's own split model with LoRA (bottom on a robot, top on the edge: the trainers' defaults) and
    the file the edge trainer writes of it. B, zero at the start of training, is drawn at random (large enough to
    change greedy answers): any trained adapter is some such pair, and this one costs no training time."""

    def __init__(self, path) -> None:
        from edge_lam.model.adapters import save_adapter
        from edge_lam.model.decompose import describe
        from edge_lam.training.split import SplitBottom, SplitTop

        arch = describe(load_model(MODEL))
        self.base = arch.model  # the halves train copies of its layers: it stays the model without adapters
        self.bottom, self.top = SplitBottom(arch, CUT, LORA, seed=0), SplitTop(arch, CUT, LORA, seed=1)
        generator = torch.Generator().manual_seed(0)
        for half in (self.bottom, self.top):
            state = half.trainable_state()
            half.load_trainable_state({name: torch.randn(t.shape, generator=generator) * 0.05 if "lora_B" in name
                                       else t for name, t in state.items()})
        self.path = path
        save_adapter(path, {**self.bottom.trainable_state(), **self.top.trainable_state()}, LORA, MODEL)

    @torch.no_grad()
    def answers_as(self, ids: list[int], answer: list[int], adapted: bool = True) -> bool:
        """Whether this model (with its adapter, or the base without) answers prompt ``ids`` greedily with
        ``answer``: its most likely token at every position of prompt + answer is the next (one pass)."""
        sequence = torch.tensor([ids + answer])
        if adapted:
            positions = torch.arange(sequence.shape[1]).unsqueeze(0)
            logits = self.top.head(self.top.run_blocks(self.bottom.forward(sequence), positions))
        else:
            logits = self.base(sequence).logits
        return logits[0].argmax(-1).tolist()[len(ids) - 1:-1] == answer
