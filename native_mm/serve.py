"""``native-mm serve --model DIR``: one process loads a model directory once and serves it
over HTTP (FastAPI on uvicorn), streaming each answer as it is made::

    GET  /health     {"status": "ok"}
    GET  /info       vocabulary, media layouts, sampling defaults, the server's limits
    POST /generate   {"prompt": [{"text": "draw a seven"}, {"image": BASE64}, {"audio": BASE64}],
                      "output": "image", "max_new_tokens": 64, "temperature": 0.5, ...}

With ``"stream": true`` (the default) the answer is server-sent events: ``text`` events
carry each new piece of text as its token arrives, an ``image`` event a PNG (base64) when
the image's grid closes, an ``audio`` event a WAV when the clip ends, and ``done`` the
finish reason and token count; ``"stream": false`` returns them in one JSON object.

Safe by default: binds 127.0.0.1; media come only inline as base64 (a request never
names a file on the server); the body, the prompt's tokens, the output tokens and the
audio seconds are limited (:class:`Limits`), each refusal a 4xx naming the limit.
Requests are served one at a time, a bounded number waiting (503 beyond it); a client
that disconnects stops its generation at the next token.
"""

# no `from __future__ import annotations`: FastAPI reads the request models defined in
# create_app from real annotations
import base64
import binascii
import io
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from native_mm import cli_help
from native_mm.constraints import GenerationError
from native_mm.pretrained import MultimodalModel


@dataclass
class Limits:
    """What one request may ask for."""

    max_request_bytes: int = 8 * 1024 * 1024  # the whole JSON body, base64 media included
    max_new_tokens: int = 2048  # output tokens per request
    max_audio_seconds: float = 30.0  # prompt clips and forced audio outputs
    max_waiting: int = 8  # requests queued behind the running one (503 beyond)


def _media(kind: str, data: str, k: int) -> Any:
    """A base64 PNG/JPEG/... -> PIL image; a base64 WAV/FLAC/... -> Waveform."""
    from native_mm.prompt_media import PromptError

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PromptError(f"prompt[{k}].{kind}: not base64 (media come inline, never as a "
                          "path on the server)") from None  # fmt: skip
    try:
        if kind == "image":
            from PIL import Image

            img = Image.open(io.BytesIO(raw))
            img.load()
            return img.convert("RGB")
        import soundfile

        samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as e:  # PIL and libsndfile raise many types for a bad file
        raise PromptError(f"prompt[{k}].{kind}: cannot decode the {kind} ({e})") from None
    from native_mm.tokenizers.base import Waveform

    return Waveform(samples.T.copy(), int(rate))


def _encode(media: Any) -> tuple[str, str]:
    """A decoded output -> (event name, payload)."""
    buf = io.BytesIO()
    if hasattr(media, "save"):  # a PIL image
        media.save(buf, format="PNG")
        return "image", base64.b64encode(buf.getvalue()).decode()
    import soundfile

    soundfile.write(buf, media.samples.T, media.sample_rate, format="WAV")
    return "audio", base64.b64encode(buf.getvalue()).decode()


def answer_events(mm: MultimodalModel, request: dict, limits: Limits) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` pairs of one request's answer, as they are made (raises
    PromptError / GenerationError before the first one for a request it refuses)."""
    from native_mm.generation import encode_prompt
    from native_mm.prompt_media import PromptError, audio_seconds
    from native_mm.sequence import SequenceCodec

    segments = []
    for k, seg in enumerate(request["prompt"]):
        kind = next(key for key in ("text", "image", "audio") if seg.get(key) is not None)
        value = seg[kind] if kind == "text" else _media(kind, seg[kind], k)
        seconds = audio_seconds(value) if kind == "audio" else None
        if seconds is not None and seconds > limits.max_audio_seconds:
            raise PromptError(f"prompt[{k}].audio: {seconds:.1f} s is longer than the "
                              f"server's {limits.max_audio_seconds} s")  # fmt: skip
        segments.append((kind, value))
    if (request.get("audio_seconds") or 0) > limits.max_audio_seconds:
        raise GenerationError(f"audio_seconds above the server's {limits.max_audio_seconds}")
    sampling = {k: request[k] for k in ("temperature", "top_k", "top_p", "cfg_scale")
                if request.get(k) is not None}  # fmt: skip
    get = request.get
    segments, spec, config, media = mm.prepare(
        segments, get("output"), get("image_size"), get("audio_seconds"),
        request["max_new_tokens"], get("seed"), sampling)  # fmt: skip
    p, tok = mm.pretrained, mm.tokenizers
    codec = SequenceCodec(tok.vocab, p.layout)
    prompt = encode_prompt(segments, tok, codec.layout, media, p.model.config.block_size)
    return _stream(mm, codec, prompt, spec, config)


def _stream(mm, codec, prompt, spec, config) -> Iterator[tuple[str, Any]]:
    from native_mm.generation import stream_ids

    tok, text_r = mm.tokenizers, mm.tokenizers.vocab.ranges["text"]
    run: list[int] = []
    shown, n = "", 0
    for event in stream_ids(mm.pretrained.model, [prompt], codec, spec, config):
        t, n = int(event.tokens[0]), n + 1
        if t in text_r:  # text streams token by token (the decoded run's new characters)
            run.append(t - text_r.start)
            text = tok["text"].decode(np.array(run))
            if len(text) > len(shown):
                yield "text", text[len(shown) :]
            shown = text
        else:
            run, shown = [], ""
        for _, span in event.spans:
            if span.kind in ("image", "audio"):
                yield _encode(tok[span.kind].decode(span.codes))
        if bool(event.finished[0]):
            reason = "stop_token" if t in spec.stop_tokens else "length"
            yield "done", {"finish_reason": reason, "tokens": n}
            return
        yield "step", n  # not sent: hands control back after every token (disconnects)


def create_app(mm: MultimodalModel, limits: Limits | None = None) -> Any:
    """The FastAPI application over one loaded model."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, Field, model_validator
    from starlette.background import BackgroundTask

    limits = limits or Limits()
    app = FastAPI(title="native-mm", version="1")
    gate = threading.Lock()  # one generation at a time
    admitted = threading.BoundedSemaphore(limits.max_waiting + 1)  # the running one + queue

    class Segment(BaseModel):
        text: str | None = None
        image: str | None = None  # base64
        audio: str | None = None  # base64

        @model_validator(mode="after")
        def one_kind(self):  # -> Segment
            if sum(v is not None for v in (self.text, self.image, self.audio)) != 1:
                raise ValueError("a segment has exactly one of text, image, audio")
            return self

    class GenerateRequest(BaseModel):
        prompt: list[Segment] = Field(min_length=1)
        output: Literal["text", "image", "audio"] | None = None
        max_new_tokens: int = Field(256, ge=1, le=limits.max_new_tokens)
        temperature: float | None = None
        top_k: int | None = None
        top_p: float | None = None
        cfg_scale: float | None = None
        seed: int | None = 0
        image_size: tuple[int, int] | None = None
        audio_seconds: float | None = Field(None, gt=0)
        stream: bool = True

    @app.middleware("http")
    async def body_limit(request: Request, call_next):  # before the body is read
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_request_bytes):
            return JSONResponse({"detail": f"request body over {limits.max_request_bytes} "
                                 "bytes (the server's max_request_bytes)"}, 413)  # fmt: skip
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:
        p = mm.pretrained
        return {"vocabulary": mm.tokenizers.vocab.to_manifest(), "layout": p.layout.to_dict(),
                "context": p.model.config.block_size, "steps": p.steps,
                "generation_defaults": mm.defaults.to_dict(), "limits": asdict(limits)}  # fmt: skip

    @app.post("/generate")
    def generate(req: GenerateRequest, request: Request):
        if not admitted.acquire(blocking=False):
            raise HTTPException(503, "the server is busy; retry later")
        gate.acquire()
        freed: list[bool] = []

        def free(events: Any = None) -> None:
            """Ends the request once, whichever way it ends: stops its generation (a
            started generator, closed) and lets the next request in."""
            if events is not None:
                events.close()
            if not freed:
                freed.append(True)
                gate.release()
                admitted.release()

        try:
            events = answer_events(mm, req.model_dump(), limits)
            first = next(events)  # refusals raise before the first event
        except (GenerationError, ValueError) as e:
            free()
            raise HTTPException(400, str(e)) from None
        except BaseException:
            free()
            raise
        items = itertools.chain([first], events)
        if not req.stream:
            out = {"text": "", "media": []}
            try:
                for name, data in items:
                    if name == "text":
                        out["text"] += data
                    elif name == "done":
                        out.update(data)
                    elif name != "step":
                        out["media"].append({"kind": name, "data": data})
            finally:
                free(events)
            return out

        async def sse() -> Any:
            """Events pulled from the generation thread, one step at a time."""
            import anyio

            while not await request.is_disconnected():
                # not cancellable mid-step: the generator is idle when the response ends
                item = await anyio.to_thread.run_sync(next, items, None)
                if item is None:
                    return
                if item[0] != "step":
                    yield f"event: {item[0]}\ndata: {json.dumps(item[1])}\n\n"

        # runs when the response ends, finished or the client gone: generation stops
        # there (not at the generator's garbage collection) and the model is free again
        done = BackgroundTask(free, events)
        return StreamingResponse(sse(), media_type="text/event-stream", background=done)

    return app


def main(argv: list[str] | None = None, prog: str = "native-mm serve") -> int:
    """``native-mm serve --model DIR [--host 127.0.0.1] [--port 8000]``."""
    from native_mm.generate_cli import add_device_options

    p = cli_help.parser(prog, (__doc__ or "").split("\n")[0])
    p.add_argument("--model", required=True, help="a model directory (native-mm export), a "
                   "run directory or a checkpoint (then --tokenizers)")  # fmt: skip
    p.add_argument("--tokenizers", help="tokenizer set (default: the model's own)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    add_device_options(p)
    for name, default in asdict(Limits()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                       help=f"limit per request (default: {default})")  # fmt: skip
    args = p.parse_args(argv)
    import uvicorn

    limits = Limits(**{k: getattr(args, k) for k in asdict(Limits())})
    mm = MultimodalModel.from_pretrained(args.model, args.tokenizers, args.device, args.dtype)
    uvicorn.run(create_app(mm, limits), host=args.host, port=args.port, log_level="info")
    return 0
