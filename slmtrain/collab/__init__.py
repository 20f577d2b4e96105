"""Device-cloud collaboration: route each query to the local model or a cloud endpoint (any OpenAI-compatible
server, such as ``slmtrain.serve``) with a threshold calibrated to a quality target (``routing``, ``calibration``),
speed up a large model with a small one (``speculative``), and the per-step decoding they and the server share
(``decoding``)."""

from slmtrain.collab.speculative import SpeculativeResult, speculative_generate

__all__ = ["SpeculativeResult", "speculative_generate"]
