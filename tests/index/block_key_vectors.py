#!/usr/bin/python3
"""An independent implementation of kvidx block keys (docs/block-keys.md), in Python.

Prints one line per test vector: name, then the keys in hex. block_key_test runs it and
compares with the C++ implementation, so the two can only agree if both follow the spec.
Needs Debian's python3-xxhash (run with /usr/bin/python3).
"""
import struct
import xxhash

ROOT_SEED = int.from_bytes(b"kvidxv01", "big")


def root(model: str, lora: str = "") -> int:
    data = b"kvidx-ns-v1\x00" + model.encode() + b"\x00" + lora.encode()
    return xxhash.xxh3_64_intdigest(data, seed=ROOT_SEED)


def chain(parent: int, tokens, block_size: int, extra=None):
    keys = []
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size:(i + 1) * block_size]
        data = struct.pack("<%dI" % len(block), *block)
        if extra is not None and extra[i]:
            data += struct.pack("<I", 0xFFFFFFFF) + extra[i]
        parent = xxhash.xxh3_64_intdigest(data, seed=parent)
        keys.append(parent)
    return keys


def engine_key(root_key: int, engine_hash: int) -> int:
    return xxhash.xxh3_64_intdigest(struct.pack("<Q", engine_hash), seed=root_key)


def main():
    r = root("meta-llama/Llama-3.1-8B-Instruct")
    print("root_llama", "%016x" % r)
    print("root_llama_lora", "%016x" % root("meta-llama/Llama-3.1-8B-Instruct", "sql-adapter"))
    print("chain_1_32_bs16", " ".join("%016x" % k for k in chain(r, list(range(1, 33)), 16)))
    print("chain_wide_bs4", " ".join(
        "%016x" % k for k in chain(r, [0, 1, 127, 128, 65535, 65536, 151643, 4294967294], 4)))
    print("chain_extra_bs2", " ".join(
        "%016x" % k for k in chain(r, [5, 6, 7, 8], 2, extra=[b"\x91\xa4salt", b""])))
    print("engine_key", "%016x" % engine_key(r, 0xF0E1D2C3B4A59687))


if __name__ == "__main__":
    main()
