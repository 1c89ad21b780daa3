"""Fuzz every gRPC method of a running server: random, mutated and raw requests.

Messages built from each method's input descriptor (edge values, undefined enum
numbers, huge and odd strings), their bytes mutated (bit flips, truncation,
insertion, duplication), and random bytes, each with a real, missing or wrong
token. Every answer must be a status SPEC §9 defines; INTERNAL, UNKNOWN,
UNAVAILABLE... mean an exception escaped a servicer: ``FuzzTally.undefined``.
Each case has its own seed drawn from ``seed``: a run replays exactly.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from random import Random
from typing import Any

import grpc
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from clearing.codes import ChargedTo, TapStatus
from clearing.limits import RESULT_BYTES, TAP_BYTES, TAP_STRUCT
from clearing.server.auth import METHOD_ROLES
from clearing.server.tap_service import batch_mac
from clearing.tools.client import bearer, channel, unpack_results
from clearing.v1 import admin_pb2, cards_pb2, denylist_pb2, settlement_pb2, taps_pb2

SC = grpc.StatusCode
_REFUSED = (SC.INVALID_ARGUMENT, SC.UNAUTHENTICATED, SC.PERMISSION_DENIED, SC.NOT_FOUND)
_OTHERS = (SC.FAILED_PRECONDITION, SC.OUT_OF_RANGE, SC.ALREADY_EXISTS, SC.RESOURCE_EXHAUSTED)
DEFINED_CODES = frozenset((SC.OK, *_REFUSED, *_OTHERS))
SELF_INFLICTED = frozenset({SC.DEADLINE_EXCEEDED, SC.CANCELLED})
UNARY_TIMEOUT_S = 5.0
WATCH_TIMEOUT_S = 2.0
IN_FLIGHT_MAX = 8  # overlaps calls without measuring the server's queueing
DEPTH_MAX = 3  # nested messages: deeper than any message here
HUGE = 256 * 1024  # over every field limit, far under the server's message limit
# SetClock moves the manual test clock (at most a year a call): time alone then journals
# day closes, more entries than OK answers, and later taps turn TOO_LATE.
DEFAULT_SKIP = frozenset({"AdminService/SetClock"})
Signer = tuple[int, bytes]  # a terminal id and its MAC key
Words = Collection[str]
Answer = tuple[list[Message], grpc.StatusCode, str]  # replies, final status, details
REPEATS = (0, 1, 2, 3, 5, 40)  # elements of a repeated field
SERVICE_MODULES = (taps_pb2, cards_pb2, admin_pb2, denylist_pb2, settlement_pb2)
_T = d.FieldDescriptor
_I64, _U64 = (0, 1, -1, 2**63 - 1, -(2**63)), (0, 1, 2**63 - 1, 2**63, 2**64 - 1)
_I32, _U32 = (0, 1, -1, 2**31 - 1, -(2**31)), (0, 1, 2**31, 2**32 - 1)
INT_EDGES = {
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), _I64),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), _U64),
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), _I32),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), _U32),
}
# Strings servers parse or compare: dates (valid, impossible, other ISO forms), enum-like
# names, hex keys, NUL, right-to-left marks, emoji, format and path tricks.
ALPHABET = "abcXYZ019-_ :é中\x00\u202e\U0001f600"  # ASCII, Latin-1, CJK, NUL, RTL, emoji
WORDS = (
    *("", "a", " ", "\n", "\x00", "a\x00b", "%s%n", "../../etc", "日本語カード", "🚌" * 40),
    *("1970-01-01", "0001-01-01", "9999-12-31", "2030-02-30", "10000-01-01", "2030-3-16"),
    *("20300316", "2030-W11-1", "ADULT", "STUDENT", "MERCHANT", "00" * 32, "zz" * 32),
)


@dataclass(frozen=True)
class Method:
    path: str  # "/clearing.v1.TapService/SubmitTaps"
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def key(self) -> str:  # "TapService/SubmitTaps", as in clearing.server.auth.METHOD_ROLES
        return self.path.rsplit(".", 1)[1]


def all_methods() -> list[Method]:
    """Every method of the five services, from the compiled descriptors."""
    get = message_factory.GetMessageClass
    return [
        Method(
            f"/{s.full_name}/{m.name}",
            get(m.input_type),
            get(m.output_type),
            m.client_streaming,
            m.server_streaming,
        )
        for module in SERVICE_MODULES
        for s in module.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    ]


def _int(kind: int, rng: Random) -> int:
    edges = INT_EDGES[kind]
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(edges)
    if roll < 0.7:  # small: real terminal ids, sequence numbers, amounts
        return rng.randrange(0 if min(edges) == 0 else -50, 400)
    return rng.randint(min(edges), max(edges))


def _string(rng: Random, words: Words) -> str:
    roll = rng.random()
    if roll < 0.55:
        return rng.choice((*WORDS, *words))
    if roll < 0.6:
        return "x" * rng.choice((129, 4096, HUGE))
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(40)))


def _scalar(f: d.FieldDescriptor, rng: Random, words: Words) -> Any:
    kind = f.type
    if kind in INT_EDGES:
        return _int(kind, rng)
    if kind == _T.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return rng.choice((0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 1e308))
    if kind == _T.TYPE_STRING:
        return _string(rng, words)
    if kind == _T.TYPE_BYTES:
        sizes = (0, 1, 16, 32, 35, 36, 37, 72, 108, rng.randrange(200), HUGE)
        return rng.randbytes(rng.choice(sizes))
    if kind == _T.TYPE_ENUM:
        if rng.random() < 0.8:
            return rng.choice(f.enum_type.values).number
        return rng.choice((-1, 99, 2**31 - 1, -(2**31)))  # undefined: open enums carry them
    raise TypeError(f"no generator for {f.full_name} (type {kind})")


def _fill(msg: Message, rng: Random, words: Words, depth: int) -> Message:
    for f in msg.DESCRIPTOR.fields:
        nested = f.type == _T.TYPE_MESSAGE
        if rng.random() < 0.3 or (nested and depth >= DEPTH_MAX):
            continue  # left at its default: the commonest edge of all
        if f.is_repeated and nested:
            for _ in range(rng.choice(REPEATS)):
                _fill(getattr(msg, f.name).add(), rng, words, depth + 1)
        elif f.is_repeated:
            getattr(msg, f.name).extend(_scalar(f, rng, words) for _ in range(rng.choice(REPEATS)))
        elif nested:
            _fill(getattr(msg, f.name), rng, words, depth + 1)
        else:
            setattr(msg, f.name, _scalar(f, rng, words))
    return msg


def random_message(cls: type[Message], rng: Random, words: Words = ()) -> Message:
    """A message of ``cls`` with random, often extreme, field values."""
    return _fill(cls(), rng, words, 0)


def sign_batch(batch: taps_pb2.TapBatch, terminal_id: int, key: bytes, rng: Random) -> None:
    """Make a fuzzed batch pass the shape and MAC checks, so its taps reach the engine."""
    batch.terminal_id = terminal_id
    if batch.taps and batch.packed_taps:
        batch.ClearField(rng.choice(("taps", "packed_taps")))
    batch.packed_taps = batch.packed_taps[: len(batch.packed_taps) // TAP_BYTES * TAP_BYTES]
    if not batch.taps and not batch.packed_taps:  # random taps: random cards, amounts, times
        batch.packed_taps = rng.randbytes(TAP_BYTES * rng.randint(1, 4))
    for t in batch.taps:
        t.terminal_seq = t.terminal_seq or 1  # 0 refuses the whole batch
    packed = batch.packed_taps or b"".join(
        TAP_STRUCT.pack(t.card_id, t.terminal_seq, t.list_amount_fen, t.occurred_at_ms, t.route_id)
        for t in batch.taps
    )
    batch.mac = batch_mac(key, terminal_id, packed)


def mutate(data: bytes, rng: Random) -> bytes:
    """One to four byte-level mutations of a serialized message."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(5), rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # bit flip
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncation
            del buf[at:]
        elif op == 2:  # insertion: random bytes, or a varint longer than 64 bits
            buf[at:at] = rng.randbytes(rng.randint(1, 8)) if rng.random() < 0.7 else b"\xff" * 11
        elif op == 3 and buf:  # duplication: a repeated field, a second tag
            start = rng.randrange(len(buf))
            buf[at:at] = buf[start : start + rng.randint(1, 16)]
        elif buf:  # a byte at a wire-type boundary
            buf[at % len(buf)] = rng.choice((0x00, 0x07, 0x80, 0xFF))
    return bytes(buf)


def request_bytes(m: Method, rng: Random, words: Words = (), signer: Signer | None = None) -> bytes:
    """One fuzzed request: raw bytes, a mutated message, or a message.
    ``signer``: (terminal id, key) to sign tap batches with, sometimes."""
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.choice((0, 1, 2, 7, rng.randrange(300))))
    msg = random_message(m.request, rng, words)
    if signer and isinstance(msg, taps_pb2.TapBatch) and rng.random() < 0.8:
        sign_batch(msg, *signer, rng)
    data = msg.SerializeToString()
    return mutate(data, rng) if roll < 0.45 else data


def pick_token(m: Method, tokens: Mapping[str, str], rng: Random) -> str | None:
    """Mostly a token whose role may call ``m`` (so requests get past the role check),
    else any token (role checks get fuzzed too), or a missing or wrong one.
    A key of ``tokens`` names its role before any ":" ("terminal:201")."""
    real = sorted(tokens.values())
    allowed = METHOD_ROLES.get(m.key, frozenset())
    fitting = sorted(t for k, t in tokens.items() if k.split(":")[0].upper() in allowed)
    roll = rng.random()
    if fitting and roll < 0.6:
        return rng.choice(fitting)
    if real and roll < 0.85:
        return rng.choice(real)
    return rng.choice((None, "", "wrong-token", (real[0] if real else "t") + "x"))


def is_undefined(m: Method, code: grpc.StatusCode) -> bool:
    """True when ``code`` is no status SPEC §9 defines: a bug, an exception escaped.
    A watch may end DEADLINE_EXCEEDED/CANCELLED: the fuzzer cuts it after one message."""
    return code not in DEFINED_CODES and not (m.server_streaming and code in SELF_INFLICTED)


def enum_problems(msg: Message) -> list[str]:
    """Enum fields of a reply holding a number their enum does not define."""
    problems = []
    for f, value in msg.ListFields():
        for v in value if f.is_repeated else [value]:
            if f.type == _T.TYPE_MESSAGE:
                problems += enum_problems(v)
            elif f.type == _T.TYPE_ENUM and v not in f.enum_type.values_by_number:
                problems.append(f"{f.full_name}={v}")
    return problems


def tap_reply_problems(request: bytes, reply: Message) -> list[str]:
    """What is wrong with an OK TapService reply to ``request`` (SPEC §5, §9)."""
    if not isinstance(reply, taps_pb2.TapBatchResult):
        return []
    try:
        batch = taps_pb2.TapBatch.FromString(request)
    except DecodeError:
        return ["OK reply to bytes that are no TapBatch"]
    problems = []
    count = len(batch.packed_taps) // TAP_BYTES if batch.packed_taps else len(batch.taps)
    got = len(reply.packed_results) // RESULT_BYTES if batch.packed_taps else len(reply.results)
    if got != count or (reply.results and reply.packed_results):
        problems.append(f"{count} taps, {got} results")
    if reply.terminal_id != batch.terminal_id or reply.journal_seq == 0:
        problems.append(f"terminal {reply.terminal_id}, journal_seq {reply.journal_seq}")
    for status, to, dup, charged, discount, _, _ in unpack_results(reply):
        if status not in set(TapStatus) or to not in set(ChargedTo) or dup not in (0, 1):
            problems.append(f"result ({status}, {to}, {dup}) outside the enums")
        elif status == TapStatus.OK and (charged < 0 or discount < 0):
            problems.append(f"OK tap charged {charged}, discount {discount}")
        elif status != TapStatus.OK and (charged, discount, to) != (0, 0, 0):
            problems.append(f"rejected tap ({status}) charged {charged} to {to}")
    return problems


@dataclass
class FuzzTally:
    cases: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # status code name -> calls
    ok_by_method: Counter[str] = field(default_factory=Counter)  # every method called: its OKs
    undefined: list[str] = field(default_factory=list)  # one line per answer that is a bug

    def record(self, m: Method, code: grpc.StatusCode, details: str, reqs: list[bytes]) -> None:
        self.codes[code.name] += 1
        if is_undefined(m, code):
            self.flag(m, code.name, details, reqs)

    def flag(self, m: Method, what: str, details: str, reqs: list[bytes]) -> None:
        shown = " | ".join(r[:48].hex() + ("…" if len(r) > 48 else "") for r in reqs)
        self.undefined.append(f"{m.key}: {what}: {details[:300]!r}; request {shown}")


def codec(m: Method) -> dict[str, Any]:  # requests go as given; replies must parse
    return {"request_serializer": None, "response_deserializer": m.response.FromString}


async def _unary(chan: grpc.aio.Channel, m: Method, req: bytes, md: Any) -> Answer:
    call = chan.unary_unary(m.path, **codec(m))
    try:
        return [await call(req, metadata=md, timeout=UNARY_TIMEOUT_S)], SC.OK, ""
    except grpc.aio.AioRpcError as exc:
        return [], exc.code(), exc.details() or ""


def stream_sync(chan: grpc.Channel, m: Method, reqs: list[bytes], md: Any) -> Answer:
    """A client stream, on the SYNC stack: when a server ends a stream before reading
    it all, the asyncio client may report INTERNAL "Internal error from Core"
    instead of the server's status (grpc/grpc#36066); the sync client does not."""
    call, replies = chan.stream_stream(m.path, **codec(m)), []
    try:
        replies.extend(call(iter(reqs), metadata=md, timeout=UNARY_TIMEOUT_S))
    except grpc.RpcError as exc:  # batches answered before it were journaled: keep them
        return replies, exc.code(), exc.details() or ""
    return replies, SC.OK, ""


async def _watch(chan: grpc.aio.Channel, m: Method, req: bytes, md: Any) -> Answer:
    call = chan.unary_stream(m.path, **codec(m))(req, metadata=md, timeout=WATCH_TIMEOUT_S)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        return [], exc.code(), exc.details() or ""
    finally:
        call.cancel()  # a watch never ends by itself: one message is enough
    if first is grpc.aio.EOF:  # ended without a message: its status says why
        return [], await call.code(), await call.details() or ""
    return [first], SC.OK, ""


@dataclass
class Fuzzer:
    """One run: its channels, credentials and tally."""

    aio: grpc.aio.Channel
    sync: grpc.Channel  # for client streams: see stream_sync
    tokens: Mapping[str, str]
    words: tuple[str, ...] = ()
    terminals: Mapping[str, Signer] = field(default_factory=dict)
    tally: FuzzTally = field(default_factory=FuzzTally)

    async def send(self, m: Method, reqs: list[bytes], md: Any) -> Answer:
        try:
            if m.client_streaming:
                return await asyncio.to_thread(stream_sync, self.sync, m, reqs, md)
            if m.server_streaming:
                return await _watch(self.aio, m, reqs[0], md)
            return await _unary(self.aio, m, reqs[0], md)
        except Exception as exc:  # e.g. a reply that does not parse: the server's fault too
            return [], SC.UNKNOWN, f"client saw {type(exc).__name__}: {exc}"

    async def one(self, m: Method, rng: Random) -> None:
        """Send one fuzzed call and record its answer."""
        token = pick_token(m, self.tokens, rng)
        signer = self.terminals.get(token or "")
        words = (*self.words, *self.tokens.values())
        count = rng.randint(1, 3) if m.client_streaming else 1
        reqs = [request_bytes(m, rng, words, signer) for _ in range(count)]
        replies, code, details = await self.send(m, reqs, bearer(token) if token else ())
        self.tally.cases += 1
        self.tally.ok_by_method[m.key] += len(replies)
        self.tally.record(m, code, details, reqs)
        for req, reply in zip(reqs, replies, strict=False):  # one reply per batch, in order
            for problem in enum_problems(reply) + tap_reply_problems(req, reply):
                self.tally.flag(m, "inconsistent OK reply", problem, [req])


def check_target(target: str) -> None:
    host, _, port = target.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        raise ValueError(f"fuzz only a server on 127.0.0.1, not {target!r}")


async def fuzz_methods(
    target: str,
    tokens: Mapping[str, str],
    *,
    cases: int,
    seed: int,
    skip: Collection[str] = DEFAULT_SKIP,
    words: Words = (),
    terminals: Mapping[str, Signer] | None = None,
) -> FuzzTally:
    """Send ``cases`` fuzzed calls, spread over every method, to ``target`` (loopback only).
    ``tokens``: role name (optionally ":" and more) -> bearer token.
    ``skip``: method keys ("Service/Method") left out; ``()`` for all.
    ``words``: strings the server knows (party ids, dates) to weave in.
    ``terminals``: token -> (terminal id, MAC key), to sign some tap batches
    so that fuzzed taps reach the engine.
    """
    check_target(target)
    methods = [m for m in all_methods() if m.key not in skip]
    rng = Random(seed)
    plan = [(methods[i % len(methods)], rng.getrandbits(64)) for i in range(cases)]
    link = channel(target), grpc.insecure_channel(target)  # asyncio, and sync for streams
    fuzzer = Fuzzer(*link, tokens, tuple(words), terminals or {})
    gate = asyncio.Semaphore(IN_FLIGHT_MAX)

    async def one(m: Method, case_seed: int) -> None:
        async with gate:
            await fuzzer.one(m, Random(case_seed))

    try:
        await asyncio.gather(*(one(m, r) for m, r in plan))
    finally:
        await fuzzer.aio.close()
        fuzzer.sync.close()
    return fuzzer.tally
