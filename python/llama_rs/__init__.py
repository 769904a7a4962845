"""llama_rs: run LLaMA-family models on a CPU, from Python.

Quick start::

    import llama_rs
    model = llama_rs.Model.demo()
    print(model.complete("Never trust a computer", max_tokens=40).text)
"""

from .errors import KvFull, ModelError, ParamError
from .generation import GenerationConfig, check_generation
from .info import file_info
from .model import Completion, Generation, Model, Tokenizer
from .perplexity import Perplexity, perplexity
from .quantize import FileType, QuantizeSummary, file_types, quantize_file

__all__ = [
    "Model",
    "Completion",
    "Generation",
    "ModelError",
    "KvFull",
    "ParamError",
    "Tokenizer",
    "GenerationConfig",
    "check_generation",
    "file_info",
    "perplexity",
    "Perplexity",
    "quantize_file",
    "QuantizeSummary",
    "FileType",
    "file_types",
]
__version__ = "0.1.0"
