"""The local stack (scripts/local-stack.sh: deploy.py, Ray Serve LLM, the CPU
engine, Nginx) shared by every test in this folder: started by the folder's
first test that asks for it, stopped after its last, with log tails when a
test failed. Tests that only read it share it; test_restarts.py, last by name,
stops parts of it, and any test that finds it down starts it again."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from support import REPO_ROOT
from support.local_stack import API_KEY, LocalStack, running, shared_stack_env


@pytest.fixture(scope="package")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    stack_dir = REPO_ROOT / ".runtime" / f"test-stack-{os.getpid()}"
    with running(LocalStack(stack_dir, api_key=API_KEY, extra_env=shared_stack_env()), request) as s:
        yield s


@pytest.fixture(autouse=True)
def stack_is_up(request: pytest.FixtureRequest) -> None:
    """Serving again before any test that uses the stack, if a test stopped it."""
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").ensure_up()
