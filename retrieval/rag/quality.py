"""Answer quality of a KV reuse policy against full recompute (Cache-Craft, SIGMOD 2025, section 6).

Cache-Craft and CacheBlend (EuroSys 2025) judge reuse by the generated text, not only by KV
distance. Three measures, each against the full-recompute answer of the same request:

- :func:`token_agreement`: share of the first ``n`` greedy token positions that agree;
- :func:`rouge_l`: ROUGE-L F1 of the answer texts (``rouge_score``, Lin 2004);
- :func:`answer_logprob`: mean log-probability of the reference answer's tokens, teacher-forced over
  the policy's assembled KV (how well the reused cache still supports the exact answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch

from retrieval.rag.engine import Prefilled
from retrieval.rag.generator import Generator


def token_agreement(tokens: Sequence[int], reference: Sequence[int], n: int = 32) -> float:
    """Fraction of positions ``< n`` where both sequences hold the same token (a missing one disagrees)."""
    a, b = list(tokens)[:n], list(reference)[:n]
    length = max(len(a), len(b))
    if length == 0:
        return 1.0
    return sum(x == y for x, y in zip(a, b, strict=False)) / length


@cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(text: str, reference: str) -> float:
    """ROUGE-L F1 between two answers (1.0 when both are empty)."""
    if not text.strip() and not reference.strip():
        return 1.0
    return float(_scorer().score(reference, text)["rougeL"].fmeasure)


@torch.no_grad()
def answer_logprob(generator: Generator, prefilled: Prefilled, answer: Sequence[int]) -> float:
    """Mean log-probability of ``answer`` token ids right after the prompt, over the prefilled KV."""
    answer = list(answer)
    if not answer:
        return 0.0
    logits = [prefilled.logits[None]]
    if len(answer) > 1:
        ids = torch.tensor([answer[:-1]], device=generator.device)
        out = generator.model(input_ids=ids, cache=prefilled.kv.to_dynamic_cache(), use_cache=True)
        logits.append(out.logits[0])
    logprobs = torch.log_softmax(torch.cat(logits).float(), dim=-1)
    target = torch.tensor(answer, device=logprobs.device)
    return float(logprobs.gather(1, target[:, None]).mean())
