"""Device-cloud collaboration: serve a model over an OpenAI-compatible API (``server``), route each query to the
local model or a cloud endpoint with a threshold calibrated to a quality target (``routing``, ``calibration``), and
speed up a large model with a small one (``speculative``)."""

from slmtrain.collab.speculative import SpeculativeResult, speculative_generate

__all__ = ["SpeculativeResult", "speculative_generate"]
