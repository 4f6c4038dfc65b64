"""What the whole model answers, computed in the test process: the reference every split or failed-over chain must
match token for token."""

from __future__ import annotations

import torch

from edge_lam.model.loading import load_model, load_tokenizer

MODEL = "smollm2-135m-instruct"


def greedy_tokens(prompts: list[str], max_new_tokens: int) -> dict[str, list[int]]:
    """Greedy new token ids of the whole model for each prompt, wrapped in the chat template as the gateway does."""
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    answers = {}
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers[prompt] = out[0, ids.shape[1]:].tolist()
    return answers
