"""slmtrain: build small language models end to end (curation, tokenizer, scaling laws, training, evaluation)."""

import logging

__version__ = "0.1.0"


class _TorchaoLoaderNoise(logging.Filter):
    """Importing torchao (slmtrain.eval.quantize, slmtrain.adapt's NF4, the fresh-process server's preload) logs a
    warning per optional CUDA kernel library its wheel cannot load here (``_C_mxfp8``: MX-FP8 kernels,
    ``_C_cutlass_90a``: sm90a CUTLASS kernels; slmtrain uses neither), and torch logs a deprecation for each Enum
    torchao registers with pytree. Those lines, and only those, are dropped: any other library torchao fails to
    load, and every other warning, still shows. The one place slmtrain quiets a dependency's import."""

    OPTIONAL_KERNELS = ("_C_mxfp8", "_C_cutlass")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.name == "torchao" and message.startswith("Failed to load "):
            return not any(kernel in message for kernel in self.OPTIONAL_KERNELS)
        if message.startswith("%s is an Enum subclass") and record.args:
            cls = record.args[0] if isinstance(record.args, tuple) else None
            return not getattr(cls, "__module__", "").startswith("torchao")
        return True


for _name in ("torchao", "torch.utils._pytree"):  # filters on the loggers themselves: no torch or torchao import here
    logging.getLogger(_name).addFilter(_TorchaoLoaderNoise())
