"""The generated kvidx.v1 stubs: kvidx_pb2 and kvidx_pb2_grpc.

An installed package carries them (setup.py generates them at build time). Run from the
repository instead, they are generated once from proto/kvidx/v1/kvidx.proto into a cache
directory ($KVIDX_STUBS_DIR, or one under the system's temporary directory, keyed by the
proto's contents) with grpc_tools."""
import hashlib
import importlib
import os
import sys
import tempfile

PACKAGE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(PACKAGE, "..", "..", "..", "proto", "kvidx", "v1",
                                      "kvidx.proto"))


def generate(out_dir, proto=PROTO):
    """Writes kvidx_pb2.py and kvidx_pb2_grpc.py into out_dir, the latter importing the former
    relatively (so they live inside a package)."""
    from grpc_tools import protoc  # Debian: python3-grpc-tools
    os.makedirs(out_dir, exist_ok=True)
    args = ["grpc_tools.protoc", "-I", os.path.dirname(proto), "--python_out", out_dir,
            "--grpc_python_out", out_dir, os.path.basename(proto)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on %s" % proto)
    grpc_py = os.path.join(out_dir, "kvidx_pb2_grpc.py")
    with open(grpc_py) as f:
        text = f.read()
    with open(grpc_py, "w") as f:
        f.write(text.replace("import kvidx_pb2 as kvidx__pb2", "from . import kvidx_pb2 as kvidx__pb2"))


def load():
    """(kvidx_pb2, kvidx_pb2_grpc)."""
    try:
        return (importlib.import_module("kvidx_client.kvidx_pb2"),
                importlib.import_module("kvidx_client.kvidx_pb2_grpc"))
    except ImportError:
        pass
    if not os.path.exists(PROTO):
        raise ImportError("kvidx_client: no generated stubs and no %s to generate them from" % PROTO)
    with open(PROTO, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    root = os.environ.get("KVIDX_STUBS_DIR") or os.path.join(
        tempfile.gettempdir(), "kvidx-client-stubs-%d-%s" % (os.getuid(), digest))
    pkg = os.path.join(root, "kvidx_client_stubs")
    if not os.path.exists(os.path.join(pkg, "kvidx_pb2_grpc.py")):
        staging = tempfile.mkdtemp(prefix="staging-", dir=os.path.dirname(root) or None)
        generate(os.path.join(staging, "kvidx_client_stubs"))
        with open(os.path.join(staging, "kvidx_client_stubs", "__init__.py"), "w"):
            pass
        try:
            os.rename(staging, root)  # atomic: a concurrent import sees all or nothing
        except OSError:
            if not os.path.exists(os.path.join(pkg, "kvidx_pb2_grpc.py")):
                raise
    if root not in sys.path:
        sys.path.insert(0, root)
    return (importlib.import_module("kvidx_client_stubs.kvidx_pb2"),
            importlib.import_module("kvidx_client_stubs.kvidx_pb2_grpc"))
