"""End to end with the real OptoPrime over the scripted OpenAI-compatible server (localhost).

Skipped where the optimizer package is not present.
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

from opto_adapters.langchain import OptoTracer
from tests.langchain_fakes import RecordingChatModel, tool_call


def optoprime(parameters, server):
    """OptoPrime over the scripted server (imported here: these modules may be absent)."""
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers import OptoPrime

    return OptoPrime(
        parameters, LLM(base_url=server.base_url, api_key="test", model="scripted-model")
    )


def scripted(replies):
    from opto_adapters.testing import ScriptedLLMServer

    return ScriptedLLMServer(replies)


def test_optoprime_step_changes_what_the_agent_sends_next():
    from langchain.agents import create_agent

    @tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny, 21C in {city}"

    model = RecordingChatModel(responses=[tool_call("get_weather", city="Paris"), "It is sunny."])
    agent = create_agent(model, [get_weather], system_prompt="You are a weather bot.")
    tracer = OptoTracer(agent)
    reply = {
        "reasoning": "The answer left out the temperature the tool returned.",
        "suggestion": {
            "agent.system_prompt": "You are a weather bot. Always state the temperature.",
            "tool.get_weather": "Sky and temperature (Celsius) for a city.",
        },
    }
    with scripted([reply]) as server:
        opt = optoprime(tracer.parameters, server)
        traced = tracer.run({"messages": [("user", "Weather in Paris?")]})
        opt.zero_feedback()
        opt.backward(traced, "Mention the temperature.")
        record = opt.step()
        prompt = server.prompts()[0]

    assert record.rejected == {} and set(record.applied) == {
        "agent.system_prompt",
        "tool.get_weather",
    }
    # the optimizer saw the agent loop with readable names and values
    assert "get_weather = get_weather(city=model)" in prompt
    assert "(tool_description) tool.get_weather=Get the weather for a city." in prompt
    assert "sunny, 21C in Paris" in prompt
    agent.invoke({"messages": [("user", "Weather in Rome?")]})
    assert model.calls[-1].system == "You are a weather bot. Always state the temperature."
    assert (
        model.calls[-1].tool_description("get_weather")
        == "Sky and temperature (Celsius) for a city."
    )


def test_optoprime_suggestion_breaking_a_template_is_rejected_and_the_chain_keeps_working():
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You answer questions about {topic}."), ("human", "{question}")]
    )
    model = RecordingChatModel(responses=["ok"])
    chain = prompt | model | StrOutputParser()
    tracer = OptoTracer(chain)
    reply = {"reasoning": "shorter", "suggestion": {"prompt.system": "Answer briefly."}}
    with scripted([reply]) as server:
        opt = optoprime(tracer.parameters, server)
        traced = tracer.run({"topic": "math", "question": "2+2?"})
        opt.backward(traced, "Be brief.")
        record = opt.step()
    assert "{topic}" in record.rejected["prompt.system"] and record.applied == {}
    chain.invoke({"topic": "math", "question": "2+2?"})
    assert model.calls[-1].system == "You answer questions about math."
