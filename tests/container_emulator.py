"""Runs inside the emulated SageMaker PyTorch inference container (sagemaker_container.py), never in .venv.

    python container_emulator.py MODEL_DIR PORT

MODEL_DIR is the unpacked model.tar.gz (SageMaker's /opt/ml/model); the caller puts MODEL_DIR/code on
PYTHONPATH and sets SAGEMAKER_PROGRAM, as the image's start-up does. Each HTTP request goes the way a
TorchServe worker passes it on: into a batch entry and its request headers (ts.service), then through the
image's handler service (sagemaker_pytorch_serving_container.handler_service.HandlerService, whose
Transformer finds and runs the archive's model_fn / input_fn / predict_fn / output_fn). The HTTP front end
here stands in for TorchServe's Java one: /ping answers 200 once the model is loaded.
"""

from __future__ import annotations

import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from sagemaker_pytorch_serving_container.handler_service import HandlerService
from ts.context import Context
from ts.service import Service


def main() -> None:
    model_dir, port = sys.argv[1], int(sys.argv[2])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = HandlerService()
    context = Context("model", model_dir, {"model": {"modelName": "model"}}, 1, None, "0.12.0")
    # TorchServe calls initialize when it loads the model, before the worker takes requests.
    handler.initialize(context)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def do_GET(self):
            if self.path == "/ping":
                self.answer(200, json.dumps({"status": "Healthy"}).encode(), "application/json")
            else:
                self.answer(404, b"not found", "text/plain")

        def do_POST(self):
            if self.path != "/invocations":
                self.answer(404, b"not found", "text/plain")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            content_type = (self.headers.get("Content-Type") or "").encode()
            request = {
                "requestId": b"0",
                "parameters": [{"name": "body", "contentType": content_type, "value": body}],
                "headers": [{"name": k.encode(), "value": v.encode()} for k, v in self.headers.items()],
            }
            headers, batch, _ = Service.retrieve_data_for_inference([request])
            context.request_processor = headers
            [answer] = handler.handle(batch, context)
            answer = answer.encode() if isinstance(answer, str) else answer
            processor = context.request_processor[0]
            content_type = processor.get_response_header("content-type") or "application/json"
            self.answer(processor.get_response_status_code(), answer, content_type)

        def answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
