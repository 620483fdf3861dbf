"""Chapter 13, evaluation and serving: perplexity, and a request to the OpenAI-compatible server."""
from __future__ import annotations

import math

from . import exercise


@exercise("13.perplexity", "perplexity is exp of the mean negative log-likelihood per token, over all the tokens "
                           "of all the texts (not a mean of the texts' perplexities)")
def _check_ppl(perplexity):
    texts = [[2.0, 1.0, 3.0], [0.5], [1.5, 2.5]]  # per-token NLL, in nats, of three texts
    want = math.exp(sum(map(sum, texts)) / sum(map(len, texts)))
    got = float(perplexity(texts))
    if math.isclose(got, sum(math.exp(sum(t) / len(t)) for t in texts) / 3, rel_tol=1e-6):
        return "that is the mean of the texts' perplexities: pool every token first"
    if not math.isclose(got, want, rel_tol=1e-6):
        return f"{got:.4f}; expected {want:.4f}"
    return None


@exercise("13.request", "a dict with 'model', 'messages' (a list of {'role', 'content'}: a system message, then "
                        "the user's), 'temperature': 0 and 'max_tokens': 32")
def _check_request(body):
    from ...use.openai_schema import APIError, parse_messages
    try:
        messages = parse_messages(body)
    except APIError as e:
        return f"the server would answer 400: {e}"
    if [m["role"] for m in messages] != ["system", "user"]:
        return f"the roles are {[m['role'] for m in messages]}; expected a system message, then a user message"
    if body.get("temperature") != 0 or body.get("max_tokens") != 32:
        return "set temperature 0 (greedy) and max_tokens 32"
    if not body.get("model"):
        return "name the model ('model': any name; the server serves its one model)"
    return None
