"""Tests of btc.llm: the real google-genai client against a stub HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from btc import llm

KEY = "test-key-not-secret-123"
FACTS = llm.Facts(
    predicted="meningioma",
    probabilities={"glioma": 0.07, "meningioma": 0.81, "notumor": 0.02, "pituitary": 0.10},
    model="ensemble",
    saliency_method="gradcam",
    saliency={
        "centroid_x": 0.3,
        "centroid_y": 0.2,
        "left_share": 0.7,
        "upper_share": 0.8,
        "top10_area_mass": 0.4,
        "region": "upper left",
    },  # fmt: skip
)


class _Stub(BaseHTTPRequestHandler):
    requests: list = []
    mode = "ok"
    reply = "Stub explanation."

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append({"path": self.path, "headers": dict(self.headers),
                                    "body": body.decode()})  # fmt: skip
        if self.mode == "error":
            return self._send(
                500, {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}
            )
        if self.mode == "slow":
            time.sleep(3)
        payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": self.reply}]},
                                   "finishReason": "STOP"}]}  # fmt: skip
        self._send(200, payload)

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    _Stub.requests, _Stub.mode = [], "ok"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _Stub, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(url, timeout_s=5.0, retries=1):
    return llm.make_client(timeout_s=timeout_s, retries=retries, base_url=url)


def test_explanation_sends_facts_as_text_only_by_default(stub):
    handler, url = stub
    result = llm.explain(FACTS, images=[np.zeros((64, 64, 3))], client=_client(url))
    assert (result.source, result.text) == ("gemini", "Stub explanation.")
    (request,) = handler.requests
    assert "gemini-2.5-flash:generateContent" in request["path"]
    body = request["body"]
    assert KEY not in body and "inlineData" not in body and "inline_data" not in body
    assert request["headers"].get("x-goog-api-key") == KEY  # the key travels in a header only
    prompt = json.loads(body)["contents"][0]["parts"][0]["text"]
    for fact in ("meningioma", "81.0%", "pituitary tumour at 10.0%", "upper left", "red/yellow"):
        assert fact in prompt, fact
    system = json.dumps(json.loads(body)["systemInstruction"])
    assert "not a diagnosis" in system and "treatment" in system


def test_images_are_sent_only_when_shared_and_without_metadata(stub):
    handler, url = stub
    scan = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    llm.explain(FACTS, images=[scan], share_images=True, client=_client(url))
    body = json.loads(handler.requests[-1]["body"])
    parts = body["contents"][0]["parts"]
    images = [p for p in parts if "inlineData" in p]
    assert len(images) == 1, parts
    inline = images[0]["inlineData"]
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png", inline.keys()
    data = inline["data"]
    raw = __import__("base64").urlsafe_b64decode(data + "=" * (-len(data) % 4))
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(raw))
    assert not img.info.get("exif") and np.array_equal(np.asarray(img), scan)
    assert ".jpg" not in json.dumps(body) and ".png" not in json.dumps(body)


def test_chat_history_round_trip(stub):
    handler, url = stub
    client = _client(url)
    handler.reply = "First answer."
    answer, history = llm.chat([], "Why meningioma?", FACTS, client=client)
    handler.reply = "Second answer."
    answer2, history = llm.chat(history, "And the runner-up?", FACTS, client=client)
    assert (answer, answer2) == ("First answer.", "Second answer.")
    assert [t["role"] for t in history] == ["user", "model", "user", "model"]
    sent = json.loads(handler.requests[-1]["body"])["contents"]
    texts = [p["text"] for c in sent for p in c["parts"]]
    assert texts[-3:] == ["Why meningioma?", "First answer.", "And the runner-up?"]
    assert [c["role"] for c in sent[-3:]] == ["user", "model", "user"]


def test_http_500_falls_back_to_the_template_after_bounded_retries(stub):
    handler, url = stub
    handler.mode = "error"
    result = llm.explain(FACTS, client=_client(url, retries=1))
    assert result.source == "template" and llm.TEMPLATE_LABEL in result.text
    assert "meningioma" in result.text and "81.0%" in result.text
    assert "500" in result.error and KEY not in result.error
    assert len(handler.requests) == 2  # one try + one retry, then stop


def test_timeout_falls_back_to_the_template(stub):
    handler, url = stub
    handler.mode = "slow"
    start = time.perf_counter()
    result = llm.explain(FACTS, client=_client(url, timeout_s=0.5, retries=0))
    assert result.source == "template" and time.perf_counter() - start < 3
    assert "not AI-generated" in result.text


def test_without_a_key_the_template_is_used(monkeypatch):
    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert llm.make_client() is None
    result = llm.explain(FACTS)
    assert result.source == "template" and "runner-up is pituitary tumour at 10.0%" in result.text
    answer, history = llm.chat([], "What next?", FACTS)
    assert "GEMINI_API_KEY" in answer and len(history) == 2
    with pytest.raises(ValueError, match="question"):
        llm.chat([], "  ", FACTS)


def test_llm_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, btc.llm; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
