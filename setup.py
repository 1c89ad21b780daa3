"""Build: compiles the Cython extensions and generates the gRPC stubs.

Nothing produced here is committed: the generated C (under `build/cython`), the
extension modules (`clearing.core._ledger`, `clearing.core._summary`) and
`clearing/v1/*_pb2*.py` are all build outputs.
"""

from __future__ import annotations

import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_protos() -> None:
    """protoc -Iproto → clearing/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py.

    proto/clearing/v1 only: proto/grpc/health/v1/health.proto is shipped for tools
    (buf curl, grpcurl) and never compiled here, as grpcio-health-checking already
    defines those symbols in the process."""
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(HERE, "proto", "clearing", "v1", "*.proto")))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{os.path.join(HERE, 'proto')}",
        f"-I{include}",
        f"--python_out={HERE}",
        f"--pyi_out={HERE}",
        f"--grpc_python_out={HERE}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on proto/clearing/v1/*.proto")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class BuildExtWithProtos(build_ext):
    def run(self) -> None:
        generate_protos()  # editable installs build extensions but not always build_py
        super().run()


extensions = cythonize(
    [
        Extension(
            "clearing.core._ledger",
            ["ext/clearing/core/_ledger.pyx"],
            include_dirs=["ext"],  # clearing/core/clearing_core.h
            depends=glob.glob("ext/clearing/core/*.pxi") + ["ext/clearing/core/clearing_core.h"],
        ),
        Extension(
            "clearing.core._summary",
            ["ext/clearing/core/_summary.pyx"],
            include_dirs=["ext"],
            depends=["ext/clearing/core/clearing_core.pxi", "ext/clearing/core/wire.pxi",
                     "ext/clearing/core/clearing_core.h"],
        ),
    ],
    include_path=["ext"],
    language_level=3,
    compiler_directives={
        "boundscheck": False,
        "wraparound": False,
        "initializedcheck": False,
        "overflowcheck": True,  # money never wraps
        "embedsignature": True,
        "autotestdict": False,  # no __test__ dict of docstrings: nothing runs doctests here
    },
    build_dir="build/cython",
)

setup(
    ext_modules=extensions,
    cmdclass={"build_py": BuildPyWithProtos, "build_ext": BuildExtWithProtos},
)
