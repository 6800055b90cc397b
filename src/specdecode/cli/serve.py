"""``specdecode serve``: an OpenAI-compatible HTTP server (Starlette on uvicorn) for one model."""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from specdecode.errors import SpecDecodeError

EPILOG = """\
examples:
  specdecode serve                                   # the default model, method ar, 127.0.0.1:8000
  specdecode serve --method hybrid --port 8080
  specdecode serve --model ./my-model --chat-template chat.jinja

routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus). A request picks its own method with the extension field
{"specdecode": {"method": "pld"}}. Ctrl-C or SIGTERM stop the server gracefully: requests
in flight finish (for at most --shutdown-timeout seconds, then they are cancelled)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over HTTP: OpenAI's chat completions and completions APIs, "
        "with streaming, Predicted Outputs and speculative decoding per request.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="HF folder, .gguf file, cached hub id or 'default'")
    p.add_argument("--method", default="ar", help="the default decoding method (see `specdecode methods`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an option of --method")
    p.add_argument("--draft", default=None, help="a draft model, for the draft-model methods")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the port (default: %(default)s; 0: any free port)")
    p.add_argument(
        "--served-model-name", default=None, help="the model id clients use (default: the model's name)"
    )
    p.add_argument("--chat-template", default=None, metavar="FILE", help="a Jinja chat template to use")
    p.add_argument(
        "--max-active", type=int, default=8, help="generations interleaved at once (default: %(default)s)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests waiting for a slot; more get 429 (default: %(default)s)",
    )
    p.add_argument("--max-tokens", type=int, default=4096, help="the most new tokens a request may ask for")
    p.add_argument(
        "--default-max-tokens", type=int, default=256, help="new tokens when a request does not say"
    )
    p.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="the longest prompt (default: the context)"
    )
    p.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get on shutdown"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for the forwards (default: torch's)"
    )
    from specdecode.backends import add_backend_argument

    add_backend_argument(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
    return p


def _check(args) -> dict:
    """Argument errors before the model loads; returns the default method's options."""
    for name in ("max_active", "max_tokens", "default_max_tokens"):
        if getattr(args, name) < 1:
            raise SpecDecodeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise SpecDecodeError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise SpecDecodeError(f"--max-prompt-tokens must be >= 1, got {args.max_prompt_tokens}")
    if not 0 <= args.port <= 65535:
        raise SpecDecodeError(f"--port must be from 0 to 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise SpecDecodeError(f"--threads must be >= 1, got {args.threads}")
    if args.shutdown_timeout < 0:
        raise SpecDecodeError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    from specdecode.backends import check_backend
    from specdecode.registry import get_method, parse_option_strings

    args.backend = check_backend(args.backend)
    spec = get_method(args.method)
    options = spec.parse_options(parse_option_strings(args.option))
    if spec.needs_draft and not args.draft:
        raise SpecDecodeError(f"method {args.method!r} needs a draft model: pass --draft MODEL")
    return options


def _chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecDecodeError(f"--chat-template {path}: cannot read it ({e})") from None


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (uvicorn listens on it); the port is known before serving."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise SpecDecodeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


class _Stop(Exception):
    """SIGTERM, raised after uvicorn's graceful shutdown (uvicorn re-raises the signal)."""


def run(args) -> int:
    options = _check(args)
    template = _chat_template(args.chat_template)
    sock = _listen(args.host, args.port)  # a port in use is found before the model loads
    try:
        _serve(_app(args, options, template), sock, args)
    finally:
        sock.close()
    return 0


def _app(args, options: dict, template: str | None):
    """The model, loaded once, and the app around it."""
    from specdecode.models import load_model
    from specdecode.server import Limits, ServerConfig, create_app

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    draft = load_model(args.draft, device=str(loaded.device), dtype=args.dtype) if args.draft else None
    if template is not None:
        loaded.tokenizer.chat_template = template
    limits = Limits(args.max_tokens, args.default_max_tokens, args.max_prompt_tokens)
    config = ServerConfig(
        method=args.method, options=options, limits=limits, max_active=args.max_active,
        max_queue=args.max_queue, model_id=args.served_model_name,
    )  # fmt: skip
    return create_app(loaded, config, draft=draft)


def _serve(app, sock: socket.socket, args) -> None:
    """Serve until SIGTERM or Ctrl-C; both stop gracefully (see specdecode.server.serving)."""
    from specdecode.server.serving import serve

    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    banner = f"specdecode: serving {app.state.server.served.model_id} (method {args.method}) on {url}"
    old = signal.signal(signal.SIGTERM, _raise_stop)  # uvicorn re-raises it once it has stopped
    try:
        serve(app, sock, banner=banner, log_level=args.log_level, shutdown_timeout=args.shutdown_timeout)
    except _Stop:
        print("specdecode: stopped (SIGTERM)", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_stop(signum, frame) -> None:
    raise _Stop
