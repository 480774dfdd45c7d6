"""One factory for every endpoint kind: a recipe section in, an `Endpoint` out.

Generation (the teacher) and evaluation (the judge, the baseline, the student) build their
endpoints here, so a new kind is added in one place. Each kind's module loads only when one is
built (httpx for openai, torch for local, reasoning-gym for tasks). Errors name the recipe section
the config came from (`where`, e.g. `eval.judge.endpoint`). This module calls no endpoint.
"""

from __future__ import annotations

from seed.endpoints.base import Endpoint
from seed.recipe import (
    AnthropicEndpointConfig,
    EndpointConfig,
    LocalEndpointConfig,
    OpenAIEndpointConfig,
)


def make_endpoint(config: EndpointConfig, where: str, *, timeout: float = 120.0,
                  max_connections: int = 256) -> Endpoint:
    """The endpoint `config` describes; `timeout` (seconds per request) and `max_connections`
    apply to HTTP kinds only."""
    if isinstance(config, OpenAIEndpointConfig):
        from seed.endpoints.openai import OpenAIEndpoint

        return OpenAIEndpoint(config.base_url, config.model, api_key_env=config.api_key_env,
                              api_key_file=config.api_key_file, headers=config.headers,
                              api_version=config.api_version, route=config.route,
                              timeout=timeout, max_connections=max_connections, what=where)
    if isinstance(config, AnthropicEndpointConfig):
        from seed.endpoints.anthropic import AnthropicEndpoint

        return AnthropicEndpoint(
            config.model, base_url=config.base_url, api_key_env=config.api_key_env,
            api_key_file=config.api_key_file, anthropic_version=config.anthropic_version,
            headers=config.headers, route=config.route, thinking_budget=config.thinking_budget,
            adaptive_thinking=config.adaptive_thinking, cache_system=config.cache_system,
            timeout=timeout, max_connections=max_connections, what=where)
    if isinstance(config, LocalEndpointConfig):
        from seed.endpoints.local import LocalModel

        return LocalModel(config.path)
    from seed.endpoints.tasks import TasksEndpoint

    return TasksEndpoint(config.tasks, what=where)
