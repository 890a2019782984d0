"""The eager backend: transformers with its dynamic KV cache, one Python-launched forward per decode step."""

from __future__ import annotations

from latency_sensitivity.engine.base import Backend, Clock, timed_request


class EagerBackend(Backend):
    """transformers' dynamic KV cache, one Python-launched forward per decode step (one_request)."""

    name = "eager"

    def __init__(self, model):
        self.model = model

    def request(self, prompt, gen_tokens: int, clock, rep_name: str):
        return one_request(self.model, prompt, gen_tokens, clock, rep_name)

    def prefill(self, prompt):
        return self.model(input_ids=prompt, use_cache=True, logits_to_keep=1).logits

    def generate(self, prompt, gen_tokens: int, forced=None):
        import torch

        out = self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = [out.logits[:, -1].float().clone()]
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens = [token]
        for i in range(gen_tokens - 1):
            inp = forced[:, i : i + 1] if forced is not None else token
            out = self.model(input_ids=inp, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            logits.append(out.logits[:, -1].float().clone())
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(token)
        return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)

    def close(self) -> None:
        self.model = None


def one_request(model, prompt, gen_tokens: int, clock: Clock, rep_name: str):
    """Prefill (logits_to_keep=1) then gen_tokens - 1 greedy decode steps on the KV cache, never stopping early.

    transformers' dynamic KV cache, one forward per step (the eager backend). The timing is
    timed_request's, shared by every backend. Returns prefill_ms, ttft_ms, [decode step ms], e2e_ms.
    """
    state: dict = {}

    def prefill():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        state["cache"] = out.past_key_values
        return out.logits[:, -1].argmax(dim=-1, keepdim=True)

    def step(token):
        out = model(input_ids=token, past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
        state["cache"] = out.past_key_values
        return out.logits[:, -1].argmax(dim=-1, keepdim=True)

    result = timed_request(prefill, step, gen_tokens, clock, rep_name)
    cache = state.pop("cache")
    expected = prompt.shape[1] + gen_tokens - 1
    if cache.get_seq_length() != expected:
        raise RuntimeError(f"KV cache holds {cache.get_seq_length()} positions, expected {expected}")
    return result
