"""Serve a checkpoint with vLLM for roi-agents: the server's flags in one place.

vLLM pins its own torch and transformers, so it lives in its own virtualenv and is started as a
separate process; this package never imports vllm. `VLLMServer` starts it on a free loopback
port, waits for ``/health`` and stops it.
"""

from roi_agents_vllm.server import (
    VLLMServer,
    model_length,
    server_command,
    server_environment,
    vllm_python,
)

__all__ = ["VLLMServer", "model_length", "server_command", "server_environment", "vllm_python"]
