"""Which GGUF files on the Hub would make the best fallback model here, known before downloading.

hub.py reads each candidate's header by HTTP ranges; ``fit`` (``LocalModels.fit``, passed
in) plans it against the memory free now, as it plans a local model; and it is scored by
``optimize``'s rule (``scoring.model_score``: quality first, then speed and headroom). The
quality comes from the parameter count less what the quantization is known to cost:
llama.cpp's quantize tool lists the perplexity each quantization adds to Llama-3-8B,
which is turned into the full-precision size that would have the same perplexity
(``effective_params``). Scoring and ranking are pure (``rank``); ``recommend`` fetches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from ._model import Model
from .errors import FallbackError
from .fit import Compatibility
from .hub import Hub, HubModel, HubUnavailable, curated
from .model_info import ModelInfo
from .scoring import model_score

__all__ = ["PPL_COSTS", "Recommendation", "effective_params", "rank", "recommend"]

#: llama.cpp's quantize table (tools/quantize): Llama-3-8B's size in GiB and the perplexity
#: (wikitext-2) each file type adds to it. The table has no Llama-3-8B row for the float
#: types: their sizes are 4 and 2 bytes a weight, their cost nil (+0.002 on Mistral-7B).
PPL_COSTS: dict[str, tuple[float, float]] = {
    "F32": (29.9, 0.0), "F16": (14.96, 0.0), "BF16": (14.96, 0.0),
    "Q8_0": (7.96, 0.0026), "Q6_K": (6.14, 0.0217), "Q5_K_M": (5.33, 0.0569),
    "Q5_K_S": (5.21, 0.1049), "Q5_1": (5.65, 0.1062), "Q5_0": (5.21, 0.1316),
    "Q4_K_M": (4.58, 0.1754), "Q4_K_S": (4.37, 0.2689), "Q4_1": (4.78, 0.4511),
    "Q4_0": (4.34, 0.4685), "Q3_K_L": (4.03, 0.5562), "Q3_K_M": (3.74, 0.6569),
    "Q3_K_S": (3.41, 1.6321), "Q2_K_S": (2.96, 3.1836), "Q2_K": (2.96, 3.5199),
}
LLAMA3_8B_PARAMS = 8.03e9
#: Llama-3-8B's F16 perplexity on wikitext-2 (llama.cpp's perplexity README scoreboard)
LLAMA3_8B_PPL = 6.77
#: a model twice the size has about 12% lower perplexity (Llama-2 7B 5.47, 13B 4.88 on
#: wikitext-2): log2 of the perplexity ratio per doubling of the parameters
LOG2_PPL_PER_DOUBLING = math.log2(1 / 0.88)

Verdict = Literal["gpu", "partial", "cpu", "none", "unknown"]


class Recommendation(Model):
    """One candidate for download: what it is, how it would fit here now, its score and why.

    ``verdict`` is ``unknown`` (score 0) when its header could not be read; ``reason``
    then says why.
    """

    repo: str
    file: str
    params: int | None  # the parameter count: read from the header, else the list's
    quantization: str | None
    license: str | None
    size_bytes: int | None
    verdict: Verdict
    gpu_layers: int
    vram_mb: float
    ram_mb: float
    score: float
    reason: str
    url: str
    #: the model's repeating layers; llama.cpp can offload these and the output layer, so
    #: ``gpu_layers`` runs up to ``n_layers + 1`` (None when the header could not be read)
    n_layers: int | None = None


def effective_params(params: int, quantization: str | None, size_bytes: int = 0
                     ) -> tuple[float, str | None]:
    """The full-precision parameter count with the perplexity of ``params`` at ``quantization``.

    A file type missing from ``PPL_COSTS`` (the IQ types) counts as the listed one nearest in
    bits per weight, from ``size_bytes``. Returns the count and the cost's words for a
    reason (None when the type and the size are both unknown: the count is then ``params``).
    """
    quant = (quantization or "").upper()
    known = quant in PPL_COSTS
    if not known:
        if not size_bytes or not params:
            return float(params), None
        bits = size_bytes * 8 / params
        quant = min(PPL_COSTS, key=lambda q: abs(_bits(q) - bits))
    added = PPL_COSTS[quant][1]
    doublings = math.log2(1 + added / LLAMA3_8B_PPL) / LOG2_PPL_PER_DOUBLING
    effective = params / 2 ** doublings
    source = f"+{added:.2f} perplexity on Llama-3-8B" + ("" if known else f", as {quant}")
    return effective, source


def _bits(quant: str) -> float:
    return PPL_COSTS[quant][0] * 2**30 * 8 / LLAMA3_8B_PARAMS


def rank(rows: Sequence[tuple[HubModel, str, ModelInfo | FallbackError, Compatibility | None]]
         ) -> list[Recommendation]:
    """Each candidate (with its URL, its header's ``ModelInfo`` or the error that kept it from
    being read, and its fit) scored, best first: the ones that fit by score, then those that
    do not fit, then those that could not be read."""
    out = [_recommendation(model, url, info, fit) for model, url, info, fit in rows]
    order = {"none": 1, "unknown": 2}
    return sorted(out, key=lambda r: (order.get(r.verdict, 0), -r.score, -(r.params or 0),
                                      r.repo, r.file))


def _recommendation(model: HubModel, url: str, info: ModelInfo | FallbackError,
                    fit: Compatibility | None) -> Recommendation:
    common = {"repo": model.repo, "file": model.file, "license": model.license, "url": url}
    if isinstance(info, FallbackError) or fit is None:
        return Recommendation(**common, params=model.params, quantization=model.quantization,
                              size_bytes=None, verdict="unknown", gpu_layers=0, vram_mb=0.0,
                              ram_mb=0.0, score=0.0, reason=str(info))
    params = info.parameters or model.params or 0
    quant = info.quantization or model.quantization
    effective, cost = effective_params(params, quant, info.size_bytes)
    entry = model_score(info.model_copy(update={"parameters": int(effective)}), fit, None)
    if fit.compatible:
        counts = f" ({cost}: counts as {_billions(effective)})" if cost else ""
        reason = f"{fit.verdict}: {_billions(params)} at {quant}{counts}; {fit.reason}"
    else:
        reason = f"{fit.verdict}: {fit.reason}"
    return Recommendation(**common, params=params or None, quantization=quant,
                          size_bytes=info.size_bytes, verdict=fit.verdict, gpu_layers=fit.gpu_layers,
                          vram_mb=fit.vram_mb, ram_mb=fit.ram_mb, score=entry.score, reason=reason,
                          n_layers=fit.n_layers or None)


def _billions(params: float) -> str:
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


def recommend(specs: Sequence[str] | None, *, fit: Callable[[ModelInfo], Compatibility],
              hub: Hub | None = None) -> list[Recommendation]:
    """Read the candidates' headers (at once, a few at a time), plan and rank them.

    Args:
        specs: what a person typed (``hub.parse_spec``); None or empty: the curated list.
        fit: plans a model against this machine now (``LocalModels.fit`` with the n_ctx asked).
        hub: where to read; None: a ``Hub`` from the environment, closed afterwards.

    Raises:
        HubOffline: HF_HUB_OFFLINE is set (nothing was fetched).
        HubUnavailable, HubFileNotFound, HubAccessDenied: no candidate could be read, and
            this is why the first could not (one line; per candidate otherwise, in ``reason``).
        InvalidSettings: a spec is none of the accepted forms, or HF_ENDPOINT is not a URL.
    """
    own = hub is None
    hub = hub if hub is not None else Hub()
    try:
        candidates = hub.resolve(specs) if specs else curated()
        infos = hub.read_all(candidates)
    finally:
        if own:
            hub.close()
    errors = [i for i in infos if isinstance(i, FallbackError)]
    if errors and len(errors) == len(infos) and (
            len(infos) == 1 or all(isinstance(e, HubUnavailable) for e in errors)):
        raise errors[0]  # one failure, or the same one for all: one line says it
    return rank([(c, hub.url(c), i, fit(i) if isinstance(i, ModelInfo) else None)
                 for c, i in zip(candidates, infos, strict=True)])
