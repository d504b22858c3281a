"""LlamaIndex adapter: trace query engines, retrievers, chat engines and agents as OPTO graphs.

```python
from opto_adapters.llama_index import OptoTracer
tracer = OptoTracer(query_engine)          # discovers prompts, tool descriptions, system prompts
query_engine.query("...")                  # traced: tracer.last_graph
```

Importing this package imports ``llama_index.core``; ``import opto_adapters`` does not.
"""

from .discovery import Discovery, Trainable, discover
from .tracer import OptoTracer

__all__ = ["Discovery", "OptoTracer", "Trainable", "discover"]
