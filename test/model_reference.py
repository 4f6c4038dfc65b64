"""What the whole model answers, computed in the test process: the reference every split or failed-over chain must
match token for token."""

from __future__ import annotations

import torch

from edge_lam.model.loading import load_model, load_tokenizer

MODEL = "smollm2-135m-instruct"


def greedy_tokens(prompts: list[str], max_new_tokens: int, model_id: str = MODEL) -> dict[str, list[int]]:
    """Greedy new token ids of the whole model for each prompt, wrapped in the chat template as the gateway does
    (a model without one, such as base Gemma, gets the prompt as plain text, as the gateway gives it)."""
    model, tokenizer = load_model(model_id), load_tokenizer(model_id)
    answers = {}
    for prompt in prompts:
        if tokenizer.chat_template is None:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers[prompt] = out[0, ids.shape[1]:].tolist()
    return answers
