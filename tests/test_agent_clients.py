"""Agent clients against `qwen-mlx serve`: the frameworks that send
``parallel_tool_calls`` (LangChain, the OpenAI Agents SDK), on the tiny model answering like
Instruct-2507 (test_structured.py checks the forced calls' grammar itself)."""

from __future__ import annotations

import openai
import pytest

from qwen_mlx.serve import Server

from .serving import Running
from .test_structured import NAME


@pytest.fixture(scope="module")
def served(tiny_instruct):
    from qwen_mlx import load

    running = Running(Server(load(tiny_instruct, context=1024), NAME))
    yield running
    running.stop()


def test_agent_clients_that_send_parallel_tool_calls(served):
    """LangChain's with_structured_output(method="function_calling") and
    bind_tools(parallel_tool_calls=False), and the Agents SDK with
    ModelSettings(parallel_tool_calls=False): all were refused before."""
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        """Weather in a city."""
        city: str = Field(max_length=12)
        unit: str = Field(pattern="^(C|F)$")

    llm = ChatOpenAI(base_url=f"{served.url}/v1", api_key="x", model=NAME, temperature=0,
                     max_tokens=120, max_retries=0)
    got = llm.with_structured_output(Weather, method="function_calling").invoke(
        "Weather in Oslo?")
    assert isinstance(got, Weather) and len(got.city) <= 12 and got.unit in ("C", "F")
    message = llm.bind_tools([Weather], tool_choice="required",
                             parallel_tool_calls=False).invoke("Weather in Oslo?")
    assert len(message.tool_calls) == 1 and message.tool_calls[0]["name"] == "Weather"

    import asyncio

    from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner,
                        set_tracing_disabled)

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    agent = Agent(name="a", instructions="Be brief.",
                  model=OpenAIChatCompletionsModel(model=NAME, openai_client=openai.AsyncOpenAI(
                      base_url=f"{served.url}/v1", api_key="x", max_retries=0)),
                  model_settings=ModelSettings(parallel_tool_calls=False, temperature=0,
                                               max_tokens=12))
    result = asyncio.run(Runner.run(agent, "Hi", max_turns=2))
    assert result.final_output == served.server.model.generate(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0, max_tokens=12).text
