"""gRPC tooling (issue 13, point 12): the shipped grpc/health/v1/health.proto is the
protocol the server speaks, so `buf curl --schema proto` works without reflection;
reflection, when configured, answers both v1 and v1alpha.

Clients here use message classes built in a private descriptor pool from descriptors
(the shipped .proto compiled by protoc; v1 reflection as its package declares it),
never the server's own generated modules for the same protocol.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import msgspec
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

import clearing.v1 as generated
from clearing.server.app import Server
from clearing.tools.client import channel

PROTO = Path(__file__).resolve().parent.parent / "proto"
HEALTH_PROTO = "grpc/health/v1/health.proto"
OUR_SERVICES = {
    "clearing.v1.TapService",
    "clearing.v1.CardService",
    "clearing.v1.AdminService",
    "clearing.v1.DenyListService",
    "clearing.v1.SettlementService",
}


def _compiled(tmp_path: Path, proto: str) -> descriptor_pb2.FileDescriptorProto:
    """``proto`` (under proto/) as protoc compiles it: what buf or grpcurl read."""
    out = tmp_path / "set.pb"
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    argv = ["protoc", f"-I{PROTO}", f"-I{include}", f"--descriptor_set_out={out}", proto]
    assert protoc.main(argv) == 0
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    def strip(messages) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(file.message_type)


def _classes(file: descriptor_pb2.FileDescriptorProto) -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()  # private: no clash with the default pool
    pool.Add(file)
    return message_factory.GetMessages([file], pool=pool)


def test_the_shipped_health_proto_is_the_protocol_the_server_speaks(tmp_path):
    ours = _compiled(tmp_path, HEALTH_PROTO)
    theirs = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(theirs)
    _without_json_names(ours)  # protoc's addition to a descriptor set, not the protocol
    ours.ClearField("name")  # grpcio-health-checking's file is grpc_health/v1/health.proto
    theirs.ClearField("name")
    assert ours == theirs


def test_the_build_generates_no_second_health_module():
    """setup.py compiles proto/clearing/v1 only: a generated grpc/health/v1 module would
    define grpc.health.v1 twice in the process."""
    pool = descriptor_pool.Default()
    assert pool.FindFileContainingSymbol("grpc.health.v1.Health").name == (
        "grpc_health/v1/health.proto"
    )
    assert not list(Path(generated.__file__).parent.glob("health*"))


@pytest.fixture
async def server(city):
    config = msgspec.structs.replace(
        city, server=msgspec.structs.replace(city.server, reflection=True)
    )
    server = Server(config)
    port = await server.start("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


async def test_health_check_with_only_the_shipped_proto(server, tmp_path):
    messages = _classes(_compiled(tmp_path, HEALTH_PROTO))
    request_class = messages["grpc.health.v1.HealthCheckRequest"]
    response_class = messages["grpc.health.v1.HealthCheckResponse"]
    async with channel(server) as chan:
        check = chan.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        reply = await check(request_class(service="clearing.v1.TapService"), timeout=10)
    assert response_class.ServingStatus.Name(reply.status) == "SERVING"


def _reflection_v1() -> dict[str, type]:
    """grpc.reflection.v1's messages: v1alpha's, in the package v1 declares (its fields
    and numbers are v1alpha's: grpc/reflection/v1/reflection.proto in grpc-proto)."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    alpha = ".grpc.reflection.v1alpha."
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(alpha, ".grpc.reflection.v1.")
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, ".grpc.reflection.v1.")
            method.output_type = method.output_type.replace(alpha, ".grpc.reflection.v1.")
    return _classes(file)


async def test_reflection_v1_lists_the_services_and_serves_their_files(server):
    messages = _reflection_v1()
    request_class = messages["grpc.reflection.v1.ServerReflectionRequest"]
    response_class = messages["grpc.reflection.v1.ServerReflectionResponse"]
    async with channel(server) as chan:
        info = chan.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        requests = [
            request_class(list_services=""),
            request_class(file_containing_symbol="clearing.v1.TapService"),
        ]
        replies = [reply async for reply in info(iter(requests), timeout=10)]
    listed, found = replies
    names = {s.name for s in listed.list_services_response.service}
    assert names == OUR_SERVICES | {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(blob)
        for blob in found.file_descriptor_response.file_descriptor_proto
    ]
    assert "clearing/v1/taps.proto" in {f.name for f in files}


async def test_reflection_v1alpha_still_answers(server):
    async with channel(server) as chan:
        call = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        (reply,) = [r async for r in call]
    names = {s.name for s in reply.list_services_response.service}
    assert names >= OUR_SERVICES and "grpc.reflection.v1.ServerReflection" in names


async def test_reflection_v1_stays_off_unless_configured(harness):
    info = harness.chan.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        _ = [r async for r in info(iter([b""]), timeout=10)]
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
