"""Coverage-guided fuzzing of every gRPC method with atheris (libFuzzer), against a server.

    python -m loadgen.soak.fuzz_atheris --target 127.0.0.1:PORT --token TOKEN \\
        [--token TOKEN ...] [--skip Service/Method ...] [--every-method] \\
        [-runs=2000 -max_total_time=60 -max_len=1024 ...]

Each input picks a method, a token (or a missing or wrong one) and either raw
request bytes, which libFuzzer mutates directly, or a message that the
generator of ``loadgen.soak.fuzz`` builds with the input as its randomness
(``ProviderRandom``: libFuzzer's mutations steer field choices and values) or
with a seed taken from the input (every field drawn, as in ``fuzz_methods``).
It goes out on a SYNC channel; a status SPEC §9 does not define, or an
inconsistent OK reply, raises ``UndefinedAnswer`` and libFuzzer reports a crash
(saving the input as ``crash-*``; choose where with ``-artifact_prefix=``).
SetClock is left out unless ``--every-method`` (see ``fuzz.DEFAULT_SKIP``).
Unknown arguments are libFuzzer's. Importable without atheris.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from random import Random
from typing import Any

import grpc

from clearing.tools.client import bearer
from loadgen.soak import fuzz
from loadgen.soak.fuzz import (
    DEFAULT_SKIP,
    UNARY_TIMEOUT_S,
    WATCH_TIMEOUT_S,
    Answer,
    Method,
    all_methods,
    check_target,
    codec,
    enum_problems,
    is_undefined,
    random_message,
    stream_sync,
    tap_reply_problems,
)

try:
    import atheris
except ImportError:  # only running it as a program needs atheris
    atheris = None

RAW_BYTES_MAX = 4096  # raw requests: long enough for any message here


def atheris_available() -> bool:
    return atheris is not None


class UndefinedAnswer(AssertionError):
    """The server answered with a status SPEC §9 does not define, or an inconsistent OK."""


class ProviderRandom(Random):
    """A ``random.Random`` whose every draw comes from the fuzzer's input bytes.

    ``Random`` builds ``randrange``, ``choice``, ``randbytes``... on ``random`` and
    ``getrandbits``, so overriding those two hands the whole generator to libFuzzer.
    An exhausted input yields zeros: defaults, first choices, empty strings.
    """

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        super().__init__(0)

    def random(self) -> float:
        return self._provider.ConsumeProbability()

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return 0
        return self._provider.ConsumeUInt((k + 7) // 8) & ((1 << k) - 1)


def _unary(chan: grpc.Channel, m: Method, req: bytes, md: Any) -> Answer:
    call = chan.unary_unary(m.path, **codec(m))
    try:
        return [call(req, metadata=md, timeout=UNARY_TIMEOUT_S)], grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return [], exc.code(), exc.details() or ""


def _watch(chan: grpc.Channel, m: Method, req: bytes, md: Any) -> Answer:
    call = chan.unary_stream(m.path, **codec(m))(req, metadata=md, timeout=WATCH_TIMEOUT_S)
    try:
        return [next(call)], grpc.StatusCode.OK, ""
    except StopIteration:  # ended without a message: its status says why
        return [], call.code(), call.details() or ""
    except grpc.RpcError as exc:
        return [], exc.code(), exc.details() or ""
    finally:
        call.cancel()  # a watch never ends by itself: one message is enough


def send(chan: grpc.Channel, m: Method, reqs: list[bytes], md: Any) -> Answer:
    if m.client_streaming:
        return stream_sync(chan, m, reqs, md)
    if m.server_streaming:
        return _watch(chan, m, reqs[0], md)
    return _unary(chan, m, reqs[0], md)


def one_input(
    chan: grpc.Channel, methods: Sequence[Method], tokens: Sequence[str], data: bytes
) -> None:
    """Build one call from ``data``, send it, raise ``UndefinedAnswer`` on a bug."""
    fdp = atheris.FuzzedDataProvider(data)
    m = methods[fdp.ConsumeIntInRange(0, len(methods) - 1)]
    choices = [*tokens, None, "wrong-token"]
    token = choices[fdp.ConsumeIntInRange(0, len(choices) - 1)]
    count = fdp.ConsumeIntInRange(1, 3) if m.client_streaming else 1
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:  # raw bytes: libFuzzer's own mutations reach the parser
        reqs = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, RAW_BYTES_MAX)) for _ in range(count)]
    else:  # a message: every choice from the input, or (denser) from a seed in it
        rng = ProviderRandom(fdp) if mode == 1 else Random(fdp.ConsumeInt(8))
        reqs = [random_message(m.request, rng).SerializeToString() for _ in range(count)]
    replies, code, details = send(chan, m, reqs, bearer(token) if token else ())
    problems = [f"{code.name}: {details!r}"] if is_undefined(m, code) else []
    for req, reply in zip(reqs, replies, strict=False):
        problems += enum_problems(reply) + tap_reply_problems(req, reply)
    if problems:
        shown = " | ".join(r[:64].hex() for r in reqs)
        raise UndefinedAnswer(f"{m.key}: {'; '.join(problems)}; request {shown}")


def instrument_generator() -> None:
    """Coverage of the generator and the judging only (``atheris.instrument_all`` takes
    half a minute here, and the server's coverage lives in another process): inputs
    that build new message shapes, or meet new kinds of answer, join the corpus."""
    for module in (fuzz, sys.modules[__name__]):
        for obj in list(vars(module).values()):
            for f in vars(obj).values() if inspect.isclass(obj) else [obj]:
                if inspect.isfunction(f) and f.__module__ == module.__name__:
                    atheris.instrument_func(f)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port, on 127.0.0.1 only")
    parser.add_argument("--token", action="append", default=[], help="a bearer token (repeat)")
    parser.add_argument("--skip", action="append", default=[], help="Service/Method to leave out")
    parser.add_argument(
        "--every-method", action="store_true", help=f"do not leave out {sorted(DEFAULT_SKIP)}"
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args, fuzzer_args = parse(sys.argv[1:] if argv is None else argv)
    check_target(args.target)
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    skip = set(args.skip) | (set() if args.every_method else DEFAULT_SKIP)
    methods = [m for m in all_methods() if m.key not in skip]
    chan = grpc.insecure_channel(args.target)

    def test(data: bytes) -> None:
        one_input(chan, methods, args.token, data)

    instrument_generator()
    atheris.Setup([sys.argv[0], *fuzzer_args], test)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
