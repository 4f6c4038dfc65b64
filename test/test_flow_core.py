"""Inference that flows (edge_lam.chain.flow) without ROS: drafts verified exactly as the whole model decides, KV
caches truncated past rejected drafts, prompt lookup, and the gateway core's policies on a fake clock with a
scripted chain and early exit (speculative, cascade, device, degraded)."""

from __future__ import annotations

import collections
import re

import pytest
import torch
from edge_lam_msgs.msg import ChainPacket, GenerationOptions, InferenceResult
from transformers import LlamaConfig, LlamaForCausalLM

from edge_lam.chain.drafting import AnswerHistory, prompt_lookup
from edge_lam.chain.flow import FlowSettings
from edge_lam.chain.gateway import PROBE_INTERVAL_S, GatewayCore, Timeouts
from edge_lam.chain.requests import ChainOutput, ChainStep, Options, Request, Result, ResultError, Route, Source
from edge_lam.chain.shard import BadInput, ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.sampling import Sampling, choose_token, verify_tokens
from edge_lam.model.sessions import SessionStore

MODEL = "smollm2-135m-instruct"
EOS = 2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


# -- verification and prompt lookup ----------------------------------------------------------------------------------


def test_greedy_verification_keeps_drafts_up_to_the_first_the_model_would_not_choose():
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 7, 1, 9]):
        logits[row, best] = 5.0
    assert verify_tokens(logits, [3, 7, 1], Sampling(), 0) == [3, 7, 1, 9]  # all kept, and the next token
    assert verify_tokens(logits, [3, 4, 1], Sampling(), 0) == [3, 7]  # the second is wrong: the model's instead
    assert verify_tokens(logits[:1], [], Sampling(), 0) == [3]
    with pytest.raises(ValueError, match="2 drafts need 3 rows"):
        verify_tokens(logits, [3, 7], Sampling(), 0)


def test_sampled_verification_keeps_the_models_distribution_whatever_the_draft():
    """Standard speculative sampling with a drafter sure of its token: over many seeds, the first token's
    frequencies match the model's probabilities, for a likely draft and for an unlikely one."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.softmax(logits[0], dim=-1)
    runs = 4000
    for draft in (0, 3):
        counts = collections.Counter(verify_tokens(logits, [draft], Sampling(True, 1.0, 1.0, seed), 0)[0]
                                     for seed in range(runs))
        observed = torch.tensor([counts[t] / runs for t in range(4)])
        assert torch.allclose(observed, expected, atol=0.03), (draft, observed, expected)


def test_prompt_lookup_continues_the_latest_earlier_occurrence_of_the_longest_repeated_suffix():
    tokens = [5, 6, 7, 8, 1, 5, 6, 9, 2, 5, 6]
    assert prompt_lookup(tokens, 2) == [9, 2]  # "5 6" last seen before at 5: followed by 9 2
    assert prompt_lookup([1, 2, 3, 4], 3) == []  # nothing repeats
    assert prompt_lookup([4, 1, 2, 4], 3) == []  # a one-token match is too weak a guess
    assert prompt_lookup([4, 1, 2, 4], 3, min_ngram=1) == [1, 2, 4]  # what follows may run into the suffix itself
    assert prompt_lookup(tokens, 0) == []


def test_prompt_lookup_falls_back_to_earlier_answers():
    history = AnswerHistory(size=2)
    for answer in ([1, 2, 3, 4], [7, 8, 9], [5, 6, 10, 11]):
        history.add(answer)
    assert history.tokens == [7, 8, 9, 5, 6, 10, 11]  # the oldest answer is forgotten
    assert prompt_lookup([20, 5, 6], 2, history=history.tokens) == [10, 11]
    assert prompt_lookup([5, 6, 30, 5, 6], 2, history=history.tokens) == [30, 5]  # the session's own first
    assert prompt_lookup([20, 2, 3], 2, history=history.tokens) == []


def test_a_truncating_checkout_cuts_the_cache_back_and_refuses_positions_past_its_end():
    store = SessionStore(lambda: FakeCache(), 60.0)
    session = store.checkout("s", 0, reset=False)
    session.length = 10
    assert store.checkout("s", 7, reset=False, truncate=True).length == 7
    assert session.cache.cropped == [-3]
    assert store.checkout("s", 7, reset=False, truncate=True).cache.cropped == [-3]  # nothing more to cut
    with pytest.raises(LookupError, match="holds 7 tokens here, the packet starts at 9"):
        store.checkout("s", 9, reset=False, truncate=True)


class FakeCache:
    def __init__(self) -> None:
        self.cropped: list[int] = []

    def crop(self, n: int) -> None:
        self.cropped.append(n)


# -- shards: speculative steps with truncation give the whole model's greedy tokens -----------------------------------


def greedy_reference(model, prompt: list[int], count: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(count):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("draft_quality", ["right", "wrong", "mixed"])
def test_split_shards_verifying_drafts_answer_exactly_the_whole_models_greedy_tokens(draft_quality):
    """A front shard (embedding, blocks 0-2) and a back shard (blocks 2-4, head) verify drafts that are right,
    wrong at once, or right then wrong; every step truncates past the drafts the head rejected before."""
    model = tiny_llama()
    front = ShardCore(model, [ModuleSpec.parse("embedding"), ModuleSpec.parse("blocks:0:2")])
    back = ShardCore(model, [ModuleSpec.parse("blocks:2:4"), ModuleSpec.parse("head")])
    prompt, count = [3, 14, 15, 9, 26, 5], 16
    truth = greedy_reference(model, prompt, count)
    out = front.step({"input_ids": torch.tensor([prompt])}, "s", 0, True, Sampling(), 0)
    tokens = back.step(out.tensors, "s", 0, True, Sampling(), 0).tensors["next_token"].tolist()
    cached, passes = len(prompt), 0
    while len(tokens) < count:
        done = len(tokens)
        right = truth[done:done + 3]
        drafts = {"right": right, "wrong": [(t + 1) % 64 for t in right],
                  "mixed": right[:1] + [(t + 1) % 64 for t in right[1:]]}[draft_quality]
        ids = torch.tensor([[tokens[-1], *drafts]])
        tensors = {"input_ids": ids, "draft_ids": torch.tensor([drafts])}
        out = front.step(tensors, "s", cached, False, Sampling(), done, truncate=True, verify=True)
        answer = back.step(out.tensors, "s", cached, False, Sampling(), done, truncate=True, verify=True)
        got = answer.tensors["next_token"].tolist()
        tokens += got
        cached += len(got)  # the first token and the drafts kept; the head's own next token is not cached yet
        passes += 1
    assert tokens[:count] == truth
    assert passes < count if draft_quality != "wrong" else passes >= count - 1


def test_a_verification_step_with_bad_drafts_is_refused():
    core = ShardCore(tiny_llama(), [ModuleSpec.parse("embedding"), ModuleSpec.parse("blocks:0:4"),
                                    ModuleSpec.parse("head")])
    ids = torch.tensor([[1, 2, 3]])
    for drafts, problem in ((None, "needs a tensor named 'draft_ids'"),
                            (torch.tensor([[1, 2, 3]]), "below the step's 3 tokens"),
                            (torch.tensor([[1, 99]]), r"must lie in \[0, 64\)"),
                            (torch.tensor([[1.0, 2.0]]), "must be int64")):
        tensors = {"input_ids": ids} | ({} if drafts is None else {"draft_ids": drafts})
        with pytest.raises(BadInput, match=problem):
            core.step(tensors, "s", 0, True, Sampling(), 0, verify=True)
    with pytest.raises(BadInput, match="route 9"):
        core.step({"input_ids": ids}, "s", 0, True, Sampling(), 0, route=9)


def test_the_route_and_source_values_are_the_messages():
    assert {r.name: int(r) for r in Route} == {n.removeprefix("ROUTE_"): getattr(ChainPacket, n)
                                               for n in dir(ChainPacket) if n.startswith("ROUTE_")}
    assert {s.name: int(s) for s in Source} == {n.removeprefix("SOURCE_"): getattr(InferenceResult, n)
                                                for n in dir(InferenceResult) if n.startswith("SOURCE_")}
    defaults = GenerationOptions()
    assert (defaults.policy, defaults.allow_degraded, defaults.draft_tokens) == ("", True, 0)


# -- the gateway core's policies --------------------------------------------------------------------------------------


class Flows:
    """A gateway core on a fake clock, with a scripted model: the whole model's next token after any context is
    ``truth[len(answer so far)]``, and the exit's is the same unless ``exit_wrong`` holds that answer index."""

    def __init__(self, truth: list[int], flows: FlowSettings, exit_wrong: frozenset[int] = frozenset(),
                 exit_confidence: float = 0.9) -> None:
        self.core = GatewayCore.for_model(MODEL, 1024, 2048, Timeouts(step_s=30.0, failover_s=60.0), flows)
        self.truth, self.exit_wrong, self.exit_confidence = truth, exit_wrong, exit_confidence
        self.now = 1000.0
        self.results: list[Result] = []
        self.sent: list[ChainStep] = []
        self.prompt_length = 0

    def take(self, actions) -> list[ChainStep]:
        steps = [a for a in actions if isinstance(a, ChainStep)]
        self.sent += steps
        self.results += [a for a in actions if isinstance(a, Result)]
        return steps

    def connect(self, exit_too: bool = True) -> None:
        self.now += PROBE_INTERVAL_S + 0.1
        for probe in self.take(self.core.tick(self.now)):
            output = ChainOutput("", probe.session_id, release=True)
            if probe.route == Route.EXIT:
                if exit_too:
                    self.take(self.core.exit_output(output, self.now))
            else:
                self.take(self.core.chain_output(output, self.now))

    def ask(self, **options) -> list[ChainStep]:
        request = Request(request_id="r", input_token_ids=(10, 11, 12, 10, 11),
                          options=Options(max_new_tokens=len(self.truth), **options))
        self.prompt_length = 5
        return self.take(self.core.request(request, self.now))

    def answered(self, step: ChainStep) -> int:
        """How many answer tokens precede the step's first input position."""
        return step.position + len(step.input_ids) - self.prompt_length - len(step.draft_ids)

    def head(self, step: ChainStep) -> ChainOutput:
        done = self.answered(step)
        kept = 0
        while kept < len(step.draft_ids) and step.draft_ids[kept] == self.truth[done + kept]:
            kept += 1
        tokens = (*step.draft_ids[:kept], self.truth[done + kept])
        return ChainOutput(step.request_id, step.session_id, step.step, tokens=tokens)

    def exit(self, step: ChainStep, confidence: float | None = None) -> ChainOutput:
        done = self.answered(step)
        token = self.truth[done] if done not in self.exit_wrong else 99
        return ChainOutput(step.request_id, step.session_id, step.step, tokens=(token,),
                           confidence=self.exit_confidence if confidence is None else confidence)

    def run(self, steps: list[ChainStep], chain_alive: bool = True, rounds: int = 200) -> Result:
        """Answer every step as the robot's exit and (if alive) the chain would, in order, until the final."""
        queue = collections.deque(steps)
        while queue and rounds:
            rounds -= 1
            step = queue.popleft()
            self.now += 0.01
            if step.release:
                continue
            if step.route in (Route.EXIT, Route.CHAIN_AND_EXIT):
                queue += self.take(self.core.exit_output(self.exit(step), self.now))
            if step.route != Route.EXIT and chain_alive:
                queue += self.take(self.core.chain_output(self.head(step), self.now))
            if not queue and not any(r.final for r in self.results):
                self.now += 1.0
                queue += self.take(self.core.tick(self.now))
        (final,) = [r for r in self.results if r.final]
        return final

    def tokens(self) -> tuple[list[int], list[Source]]:
        return ([t for r in self.results for t in r.token_ids], [s for r in self.results for s in r.token_sources])


TRUTH = [10, 11, 12, 10, 11, 12, 30, 31, 10, 11, 12, 40]  # repeats the prompt: prompt lookup drafts it


def test_speculative_with_prompt_lookup_gives_the_whole_models_tokens_in_fewer_passes():
    flows = Flows(TRUTH, FlowSettings(policy="speculative", draft_tokens=4))
    flows.connect()
    final = flows.run(flows.ask())
    tokens, sources = flows.tokens()
    assert tokens == TRUTH and final.finish_reason == "length" and final.policy == "speculative"
    assert Source.DRAFT_NGRAM in sources and Source.EXIT not in sources
    assert final.accepted == sources.count(Source.DRAFT_NGRAM) and final.drafted >= final.accepted > 0
    assert final.verify_passes < len(TRUTH)
    verifying = [s for s in flows.sent if s.verify]
    assert verifying and all(s.truncate and s.input_ids[-len(s.draft_ids):] == s.draft_ids for s in verifying)


def test_speculative_with_the_exit_drafting_gives_the_whole_models_tokens_even_when_the_exit_is_wrong():
    flows = Flows(TRUTH, FlowSettings(policy="speculative", drafter="exit", draft_tokens=3, exit=True),
                  exit_wrong=frozenset({2, 7}))
    flows.connect()
    final = flows.run(flows.ask())
    tokens, sources = flows.tokens()
    assert tokens == TRUTH and final.degraded is False
    assert Source.DRAFT_EXIT in sources and final.accepted < final.drafted
    drafting = [s for s in flows.sent if s.route == Route.EXIT]
    assert drafting and not any(s.options.do_sample for s in drafting)  # drafts are the exit's greedy choice


def test_an_unsure_exit_ends_its_draft_round_and_the_chain_decides_alone():
    flows = Flows(TRUTH, FlowSettings(policy="speculative", drafter="exit", draft_tokens=3, cascade_threshold=0.8,
                                      exit=True), exit_confidence=0.5)
    flows.connect()
    final = flows.run(flows.ask())
    tokens, sources = flows.tokens()
    assert tokens == TRUTH and set(sources) == {Source.CHAIN} and final.drafted == 0
    assert not [s for s in flows.sent if s.verify]  # nothing to verify: plain steps after each unsure draft


def test_cascade_takes_confident_exit_tokens_without_waiting_and_the_rest_from_the_chain():
    flows = Flows(TRUTH, FlowSettings(policy="cascade", cascade_threshold=0.8, exit=True), exit_wrong=frozenset({4}))
    flows.connect()
    steps = flows.ask()
    # the exit is confident on every step but index 4 (answers 99, as confident): that token is the exit's
    final = flows.run(steps)
    tokens, sources = flows.tokens()
    assert final.policy == "cascade" and sources.count(Source.EXIT) == len(TRUTH)
    assert tokens[:4] == TRUTH[:4] and tokens[4] == 99


def test_cascade_leaves_unconfident_steps_to_the_chain():
    flows = Flows(TRUTH, FlowSettings(policy="cascade", cascade_threshold=0.95, exit=True), exit_confidence=0.5)
    flows.connect()
    final = flows.run(flows.ask())
    tokens, sources = flows.tokens()
    assert tokens == TRUTH and set(sources) == {Source.CHAIN} and final.finish_reason == "length"


def test_device_answers_with_the_exit_alone_and_the_next_request_of_the_session_is_replayed():
    flows = Flows(TRUTH, FlowSettings(exit=True))
    flows.connect()
    final = flows.run(flows.ask(policy="device"))
    tokens, sources = flows.tokens()
    assert tokens == TRUTH and set(sources) == {Source.EXIT} and final.policy == "device" and not final.degraded
    assert {s.route for s in flows.sent if not s.release} == {Route.EXIT}


def test_a_chain_that_stops_answering_leaves_the_rest_to_the_exit_flagged_degraded():
    flows = Flows(TRUTH, FlowSettings(policy="chain", degrade_after_s=2.0, exit=True))
    flows.connect()
    steps = flows.ask()
    for _ in range(3):  # three tokens through the chain, then the link is cut
        (step,) = [s for s in steps if not s.release]
        steps = flows.take(flows.core.chain_output(flows.head(step), flows.now))
    flows.now += 2.5
    replay = [s for s in flows.take(flows.core.tick(flows.now)) if not s.release]
    assert len(replay) == 1 and replay[0].reset and replay[0].route == Route.EXIT
    final = flows.run(replay, chain_alive=False)
    tokens, sources = flows.tokens()
    assert final.degraded and final.policy == "device" and final.error_code == ResultError.NONE
    assert tokens == TRUTH and sources[:3] == [Source.CHAIN] * 3 and set(sources[3:]) == {Source.EXIT}


def test_without_an_exit_a_cut_chain_still_fails_the_request_as_before():
    flows = Flows(TRUTH, FlowSettings(policy="chain", degrade_after_s=2.0, exit=True))
    flows.connect(exit_too=False)
    steps = [s for s in flows.ask() if not s.release]
    flows.now += 2.5
    assert not [s for s in flows.take(flows.core.tick(flows.now)) if s.route == Route.EXIT and not s.release]
    assert steps and not any(r.final for r in flows.results)


@pytest.mark.parametrize(("options", "problem"), [
    ({"policy": "fastest"}, "policy must be one of"),
    ({"drafter": "oracle"}, "drafter must be one of"),
    ({"cascade_threshold": 1.5}, r"cascade_threshold must be in \[0, 1\]"),
    ({"draft_tokens": 100}, r"draft_tokens must be in \[0, 16\]"),
])
def test_bad_flow_options_are_refused_with_a_reason(options, problem):
    flows = Flows(TRUTH, FlowSettings())
    flows.connect()
    flows.ask(**options)
    (final,) = flows.results
    assert final.error_code == ResultError.BAD_REQUEST
    assert re.search(problem, final.error_message)


def test_choose_token_and_verification_agree_without_drafts():
    logits = torch.randn(2, 50)
    for seed in range(5):
        sampling = Sampling(True, 0.7, 0.9, seed)
        assert verify_tokens(logits[:1], [], sampling, 3) == [choose_token(logits[0], True, 0.7, 0.9, seed, 3)]
