"""gRPC server reflection, both versions tools ask for: ``grpc.reflection.v1`` (grpcurl,
buf curl and Postman try it first) and ``grpc.reflection.v1alpha`` (older tools).

grpcio-reflection 1.85 implements v1alpha only (grpc/grpc#38576). The v1 protocol is
the same messages under a new package name (field for field, number for number), so
they are the same bytes on the wire: v1 is served by grpcio-reflection's own servicer,
registered under v1's method path with v1alpha's (de)serializers. Nothing of the
protocol is written here.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as wire

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both
    reflection services."""
    names = (*service_names, *SERVICE_NAMES)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)  # v1alpha, by grpcio-reflection
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=wire.ServerReflectionRequest.FromString,
        response_serializer=wire.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )
