"""``native-mm serve`` (issue 20, slice 1): the HTTP API over one loaded model directory,
its streamed answers equal to the library's, and every refusal a 4xx naming the limit."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from native_mm.cli import main as cli
from native_mm.pretrained import from_pretrained

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from native_mm.serve import Limits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def model(checkpoint, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "model"
    assert cli(["export", "--ckpt", str(checkpoint), "--tokenizers", str(tokenizer_dir),
                "--out", str(out)]) == 0  # fmt: skip
    return from_pretrained(out)


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model, Limits(max_request_bytes=200_000, max_new_tokens=64)))


def _events(response) -> list[tuple[str, object]]:
    out = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _wav(seconds: float = 0.3) -> str:
    import soundfile

    buf = io.BytesIO()
    t = np.arange(int(8000 * seconds)) / 8000
    soundfile.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 8000,
                    format="WAV")  # fmt: skip
    return base64.b64encode(buf.getvalue()).decode()


def test_health_and_info(client, model):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["vocabulary"]["size"] == model.tokenizers.vocab.size
    assert info["limits"]["max_new_tokens"] == 64 and info["context"] == 1024


def test_streamed_text_is_the_librarys_answer_token_by_token(client, model):
    body = {"prompt": [{"text": "seven"}], "output": "text", "max_new_tokens": 12,
            "temperature": 1.0, "seed": 4}  # fmt: skip
    events = _events(client.post("/generate", json=body))
    pieces = [d for n, d in events if n == "text"]
    assert events[-1][0] == "done" and len(pieces) > 1  # streamed, not one block
    [want] = model.generate("seven", "text", max_new_tokens=12, temperature=1.0, seed=4)
    assert "".join(pieces) == "".join(want.outputs)
    assert events[-1][1]["tokens"] == len(want.ids)


def test_media_in_and_out(client, model):
    from PIL import Image

    body = {"prompt": [{"image": _png()}, {"audio": _wav()}, {"text": "draw"}],
            "output": "image", "image_size": [2, 2], "max_new_tokens": 16, "seed": 1}  # fmt: skip
    events = _events(client.post("/generate", json=body))
    [image] = [d for n, d in events if n == "image"]
    got = Image.open(io.BytesIO(base64.b64decode(image)))
    [want] = model.generate([model_image(), wav_of(), "draw"], "image", image_size=(2, 2),
                            max_new_tokens=16, seed=1)  # fmt: skip
    assert np.array_equal(np.asarray(got), np.asarray(want.outputs[-1]))
    whole = client.post("/generate", json={**body, "stream": False}).json()
    assert whole["media"][0] == {"kind": "image", "data": image}
    say = {"prompt": [{"text": "say"}], "output": "audio", "audio_seconds": 0.01, "stream": False}
    audio = client.post("/generate", json=say).json()
    assert audio["media"][0]["kind"] == "audio"
    assert base64.b64decode(audio["media"][0]["data"])[:4] == b"RIFF"


def model_image():
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(_png()))).convert("RGB")


def wav_of():
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(_wav())), dtype="float32")
    return (samples, rate)


def test_refusals_name_the_limit(client):
    def post(body, **kw):
        return client.post("/generate", json=body, **kw)

    r = post({"prompt": [{"image": "/etc/passwd"}], "output": "text"})
    assert r.status_code == 400 and "not base64" in r.json()["detail"]  # never a path
    r = post({"prompt": [{"image": base64.b64encode(b"not a png").decode()}]})
    assert r.status_code == 400 and "prompt[0].image: cannot decode" in r.json()["detail"]
    r = post({"prompt": [{"text": "x"}], "max_new_tokens": 65})
    assert r.status_code == 422 and "max_new_tokens" in r.text
    r = post({"prompt": [{"text": "x", "image": _png()}]})
    assert r.status_code == 422 and "exactly one of text, image, audio" in r.text
    r = post({"prompt": [{"text": "x" * 300_000}]})
    assert r.status_code == 413 and "max_request_bytes" in r.json()["detail"]
    r = post({"prompt": [{"audio": _wav(0.3)}], "audio_seconds": 99})
    assert r.status_code == 400 and "audio_seconds" in r.json()["detail"]
    r = post({"prompt": [{"text": "x"}], "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["detail"]
    assert client.get("/health").json() == {"status": "ok"}  # and the server goes on


def test_a_client_that_disconnects_frees_the_server(model, monkeypatch):
    """Over a real socket: a client that leaves after the first event stops its
    generation at once (the next request is served; far fewer steps than it asked for)."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from native_mm import generation

    # a long text answer (the library's, same seed), streamed token by token
    seed = next(k for k in range(50) if len(model.generate(
        "x", "text", max_new_tokens=400, temperature=2.0, seed=k)[0].ids) >= 300)  # fmt: skip
    steps: list[int] = []
    real = generation.stream_ids

    def counted(*args, **kwargs):
        for event in real(*args, **kwargs):
            steps.append(event.step)
            time.sleep(0.01)  # a slow model: the disconnect lands mid-answer
            yield event

    monkeypatch.setattr(generation, "stream_ids", counted)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    long = {"prompt": [{"text": "x"}], "output": "text", "max_new_tokens": 400,
            "temperature": 2.0, "seed": seed}  # fmt: skip
    with httpx.stream("POST", url + "/generate", json=long, timeout=30) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("event: ")  # the first event; the client leaves
    time.sleep(0.3)
    left = len(steps)
    steps.clear()
    short = {"prompt": [{"text": "y"}], "output": "text", "max_new_tokens": 4, "stream": False}
    r = httpx.post(url + "/generate", json=short, timeout=30)
    assert r.status_code == 200 and r.json()["tokens"] >= 1
    server.should_exit = True
    thread.join(10)
    assert 1 <= left < 100  # of the 300+ it would take: it stopped when the client left
