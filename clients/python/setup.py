"""Builds kvidx_client with its gRPC stubs generated from the repository's proto/ (grpc_tools,
Debian's python3-grpc-tools); nothing is fetched from the network."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        # _stubs.py alone (the package's __init__ would load the stubs it is about to get).
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "kvidx_client_build_stubs", os.path.join(HERE, "kvidx_client", "_stubs.py"))
        stubs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stubs)
        stubs.generate(os.path.join(self.build_lib, "kvidx_client"),
                       os.path.join(HERE, "..", "..", "proto", "kvidx", "v1", "kvidx.proto"))


setup(cmdclass={"build_py": BuildWithStubs})
