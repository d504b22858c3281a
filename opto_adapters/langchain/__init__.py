"""LangChain adapter: trace chains and agents into OPTO graphs and write optimized text back.

```python
from opto_adapters.langchain import OptoTracer
tracer = OptoTracer(chain)            # discovers prompts, tool descriptions, system prompts
chain.invoke(x, config={"callbacks": [tracer]})
graph = tracer.last_graph             # graph.output is a Node
```

Importing this module imports ``langchain_core`` (``import opto_adapters`` does not).
"""

from ..trace import TracedRun
from .discovery import STAMP_KEY, Discovered, discover
from .tracer import OptoTracer

__all__ = ["STAMP_KEY", "Discovered", "OptoTracer", "TracedRun", "discover"]
