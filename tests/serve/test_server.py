"""The OpenAI-compatible server, driven by the official openai client over real HTTP (uvicorn on a free port)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from slmtrain.artifacts import load_model
from slmtrain.collab.decoding import Finish, Piece
from slmtrain.model.formats.hf import export_hf
from slmtrain.serve.app import chat_prompt_ids, create_app
from slmtrain.serve.background import BackgroundServer
from slmtrain.serve.engine import Engine, Job
from slmtrain.serve.schemas import ServeOptions
from tests.eval.eval_helpers import BOS, EOS, save_byte_level_hf_tokenizer, tiny_model

KEY = "test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = export_hf(tiny_model(), tmp_path_factory.mktemp("served") / "tiny", bos_id=BOS, eos_id=EOS)
    save_byte_level_hf_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


def start(loaded, model_dir, **options) -> BackgroundServer:
    return BackgroundServer(create_app(loaded, ServeOptions(model=str(model_dir), **options)))


@pytest.fixture(scope="module")
def server(loaded, model_dir):
    with start(loaded, model_dir, api_key=KEY, max_body_bytes=20_000) as running:
        yield running


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def greedy_text(loaded, prompt: str, new_tokens: int) -> str:
    ids = torch.tensor([[BOS, *loaded.tokenizer.encode(prompt)]])
    out = loaded.model.generate(ids, new_tokens, temperature=0)
    return loaded.tokenizer.decode(out[0, ids.shape[1]:].tolist())


def test_lists_the_model_and_reports_health(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health", headers={"Authorization": f"Bearer {KEY}"})
    assert health.json()["status"] == "ok"


def test_completion_text_and_logprobs_are_the_models(client, loaded):
    reply = client.completions.create(model="tiny", prompt="The cat", max_tokens=8, temperature=0, logprobs=3)
    choice = reply.choices[0]
    assert choice.text == greedy_text(loaded, "The cat", 8)
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 8
    ids = [BOS, *loaded.tokenizer.encode("The cat"), *loaded.tokenizer.encode(choice.text)]
    with torch.no_grad():
        expected = torch.log_softmax(loaded.model(torch.tensor([ids]))[0].float(), -1)
    for i, (lp, token) in enumerate(zip(choice.logprobs.token_logprobs, ids[-8:])):
        assert lp == pytest.approx(float(expected[len(ids) - 9 + i, token]), abs=1e-4)
    assert all(0 < len(top) <= 3 for top in choice.logprobs.top_logprobs)  # byte tokens may decode alike
    assert max(choice.logprobs.top_logprobs[0].values()) == pytest.approx(choice.logprobs.token_logprobs[0])


def test_stop_strings_cut_the_text_and_seeds_repeat_samples(client, loaded):
    free = greedy_text(loaded, "Once", 20)
    stop = free[6:8]
    reply = client.completions.create(model="tiny", prompt="Once", max_tokens=20, temperature=0, stop=[stop])
    assert reply.choices[0].text == free[: free.index(stop)] and reply.choices[0].finish_reason == "stop"
    samples = [client.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=1.0, top_p=0.9,
                                         seed=seed).choices[0].text for seed in (1, 1, 2)]
    assert samples[0] == samples[1] != samples[2]


def test_chat_streams_the_same_answer_it_gives_whole(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                           logprobs=True, top_logprobs=2)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert len(whole.choices[0].logprobs.content) == 10
    assert all(len(t.top_logprobs) == 2 for t in whole.choices[0].logprobs.content)


def test_chat_uses_the_tokenizers_template(loaded):
    messages = [{"role": "user", "content": "hi"}]
    plain = chat_prompt_ids(loaded.tokenizer, messages)
    assert loaded.tokenizer.decode(plain) == "user: hi\nassistant:"
    loaded.tokenizer.inner.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[bot]"
    try:
        assert chat_prompt_ids(loaded.tokenizer, messages) == [BOS, *loaded.tokenizer.encode("[user]hi[bot]")]
    finally:
        loaded.tokenizer.inner.chat_template = None


def test_eight_concurrent_clients_get_their_own_answers(client, loaded):
    prompts = [f"Prompt number {i}:" for i in range(8)]
    expected = [greedy_text(loaded, p, 24) for p in prompts]

    def ask(prompt: str) -> str:
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, prompts)) == expected


def run_engine(loaded, max_batch: int, requests: list[tuple[str, int, float, int | None]]
               ) -> tuple[list[tuple[str, str]], int]:
    """Queue every request (prompt, max_tokens, temperature, seed) before the engine starts, so that it admits as
    many as its batch holds at once; returns their texts with finish reasons, and the largest batch it decoded."""
    loop = asyncio.new_event_loop()
    engine = Engine(loaded, max_queue=len(requests), max_batch=max_batch)
    jobs = [Job([BOS, *loaded.tokenizer.encode(prompt)], max_tokens, temperature, 1.0, [], seed, 0,
                time.monotonic() + 120, loop) for prompt, max_tokens, temperature, seed in requests]
    for job in jobs:
        engine.submit(job)

    async def text(job: Job) -> tuple[str, str]:
        pieces = []
        while not isinstance(event := await asyncio.wait_for(job.events.get(), 60), Finish):
            assert isinstance(event, Piece), event
            pieces.append(event.text)
        return "".join(pieces), event.reason

    engine.start()
    try:
        async def every_text() -> list[tuple[str, str]]:
            return list(await asyncio.gather(*map(text, jobs)))

        return loop.run_until_complete(every_text()), engine.largest_batch
    finally:
        engine.stop()
        loop.close()


def test_batched_requests_decode_as_each_would_alone(loaded):
    """Requests of different lengths join and leave one batch (continuous batching over a ragged KV cache): each
    answer is the one it gets alone, greedy or seeded sampling."""
    requests = [(f"{'word ' * i}number {i}:", 6 + 5 * i, 0.0 if i % 2 else 1.0, i) for i in range(7)]
    batched, largest = run_engine(loaded, 4, requests)
    alone, one = run_engine(loaded, 1, requests)
    assert largest == 4 and one == 1
    assert batched == alone
    greedy = [i for i, (_, _, temperature, _) in enumerate(requests) if temperature == 0 and batched[i][1] == "length"]
    assert greedy
    assert [batched[i][0] for i in greedy] == [greedy_text(loaded, requests[i][0], requests[i][1]) for i in greedy]


def test_bad_requests_get_openai_error_objects(client, server):
    cases = [
        (openai.AuthenticationError, lambda: openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
         .models.list()),
        (openai.NotFoundError, lambda: client.completions.create(model="other", prompt="x")),
        (openai.BadRequestError, lambda: client.completions.create(model="tiny", prompt="x", max_tokens=500)),
        (openai.BadRequestError, lambda: client.completions.create(model="tiny", prompt="x" * 200)),
        (openai.BadRequestError, lambda: client.completions.create(model="tiny", prompt="x",
                                                                   extra_body={"temperature": "hot"})),
        (openai.BadRequestError, lambda: client.completions.create(model="tiny", prompt="x", extra_body={"foo": 1})),
        (openai.BadRequestError, lambda: client.chat.completions.create(model="tiny", messages=[])),
        (openai.APIStatusError, lambda: client.completions.create(model="tiny", prompt="x" * 30_000)),
    ]
    statuses = []
    for error, call in cases:
        with pytest.raises(error) as raised:
            call()
        assert set(raised.value.body) >= {"message", "type", "param", "code"}  # the client unwraps {"error": ...}
        statuses.append(raised.value.status_code)
    assert statuses == [401, 404, 400, 400, 400, 400, 400, 413]
    assert raised.value.body["code"] == "request_too_large"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b'{"model": "tiny", "prompt": 7}'):
        reply = httpx.post(f"{server.base_url}/completions", content=body, headers=headers)
        assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_time_limit_and_full_queue_are_errors_not_hangs(loaded, model_dir):
    with start(loaded, model_dir, request_timeout_s=1e-6) as hurried:
        client = openai.OpenAI(base_url=hurried.base_url, api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            client.completions.create(model="tiny", prompt="x", max_tokens=50)
        assert raised.value.status_code == 504 and raised.value.body["code"] == "timeout"
    with start(loaded, model_dir, max_batch=1, max_queue=1) as narrow:
        client = openai.OpenAI(base_url=narrow.base_url, api_key="none", max_retries=0)

        def ask(_: int) -> int:
            try:
                client.completions.create(model="tiny", prompt="x", max_tokens=120, temperature=0)
                return 200
            except openai.APIStatusError as e:
                return e.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(ask, range(8)))
        assert 429 in codes and set(codes) <= {200, 429}


def test_the_serve_command_serves_and_a_taken_port_is_one_line(model_dir):
    """launch/serve.py for real: the port is bound before "serving" is printed, so a taken one is a one-line error;
    on a free port the official client lists the model (with the API key). The server is stopped after."""
    import os
    import socket
    import subprocess
    import sys

    from tests.output import diagnostics
    from tests.paths import REPO_ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        command = [sys.executable, str(REPO_ROOT / "launch" / "serve.py"), f"model={model_dir}", f"port={port}",
                   f"api_key={KEY}"]
        refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "serving" not in refused.stdout
    assert diagnostics(refused.stderr) == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    command[-2] = f"port={port}"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=10)
        deadline = time.monotonic() + 90
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=10)
                time.sleep(0.2)
        assert [m.id for m in models.data] == ["tiny"]
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert out.startswith(f"serving tiny on http://127.0.0.1:{port}/v1 (API key required)")
