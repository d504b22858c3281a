"""opto_adapters: Trace-style generative optimization for LangChain and LlamaIndex apps."""

__version__ = "0.1.0"
