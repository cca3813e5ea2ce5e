"""Seeded fuzzing of the .bcz decoder: every mutated file is refused or decodes to a valid network.

Mutations of real files (tiny LeNet-300 / LeNet-5 networks with fixed-point and codebook layers
and every position coding, the committed version-1 LeNet-300 file, and a tiny ResNet-8 with
BatchNorms, format version 3): byte overwrites,
truncations and insertions (caught by the framing and checksum), and, re-sealed with a valid
checksum so that they reach the decoder, payload byte flips, header field edits (numbers set to
boundary values, fields deleted, swapped between layers), raw header byte edits, stream address
edits and streams replaced by random bytes.

Every case runs in one worker process (:class:`test_decoder_bounds.DecoderWorker`) whose address
space is capped at its warm-up size plus :data:`HEADROOM` = 2 GiB (``RLIMIT_AS``). That is the
decoder's documented worst case for *any* accepted file (``codec.MAX_FILE_WEIGHTS`` = 2^26
weights at about 32 bytes each while a layer is decoded); these files are at most 12 KB and
describe under 0.5 M weights (~16 MB), so a case that needs more than the cap is a decoder bug
and shows as MemoryError (or a killed worker), which fails the test. Each case must also finish
within :data:`CASE_SECONDS`.

A case passes if the decoder raises ``CompressedFileError`` or returns a network that is valid:
finite arrays, the kernel shapes of the model it names, removed weights 0, and it re-encodes to
itself (checked inside the worker).

Default: 3000 cases (about 9 s; "a few thousand", issue 20). ``BAYESCOMP_FUZZ_CASES=100000`` runs more;
``BAYESCOMP_FUZZ_SEED`` changes the seed. A failure names the case number, which with the seed
reproduces it (:func:`mutate`).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from test_decoder_bounds import (
    VERSION_1_FILE,
    DecoderWorker,
    reseal,
    seal,
    tiny_batch_norm_network,
    tiny_network,
    varint_model,
)

from bayescomp.compression import container

CASES = int(os.environ.get("BAYESCOMP_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("BAYESCOMP_FUZZ_SEED", "20"))
HEADROOM = 2 * 2**30
#: A refused file takes milliseconds; a valid one is decoded, re-encoded and decoded again
#: (about 0.1 s for the 266 k-weight version-1 file). The margin is for a loaded machine.
CASE_SECONDS = 5.0

INTERESTING = [0, 1, -1, 2, 3, 7, 8, 31, 32, 63, 64, 255, 256, 2**15, 2**16, 2**16 + 1, 2**23,
               2**24, 2**26, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
               2**64, -(2**63), 10**30, 0.5, -0.0, 1e308, "", "x", None, True, [], {}, [0, 0],
               [1, 2**31], [2**20, 2**20, 1, 1]]


@pytest.fixture(scope="module")
def originals():
    return [
        tiny_network("lenet300"),
        tiny_network("lenet300", keep=(0.05, 0.95, 0.3), seed=1),
        tiny_network("lenet5"),
        tiny_network("lenet5", codebook_layer=2, keep=(0.9, 0.4, 0.1, 1.0), seed=2),
        tiny_network("lenet300", codebook_layer=0, keep=(0.5, 1.0, 1.0), seed=3),
        VERSION_1_FILE.read_bytes(),
        tiny_batch_norm_network(seed=4),  # version 3: BatchNorm entries and widths
    ]


def _leaves(node, path=()):
    """Paths of every value inside the header (dict keys and list indices)."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, path + (index,))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


def _interesting(rng, old):
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.4:
        return int(old) + int(rng.choice([-1, 1, -8, 8])) * int(rng.integers(1, 3)) \
            if rng.random() < 0.5 else int(old) * int(rng.choice([2, 1000, 2**20]))
    return INTERESTING[int(rng.integers(len(INTERESTING)))]


def mutate(original: bytes, rng) -> tuple[str, bytes]:
    """One mutation of ``original``: ``(description, bytes)``."""
    data = bytearray(original)
    kind = int(rng.integers(10))
    if kind == 0:  # overwrite bytes, checksum left wrong
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        return "overwrite", bytes(data)
    if kind == 1:  # truncate
        return "truncate", bytes(data[: int(rng.integers(len(data)))])
    if kind == 2:  # insert
        at = int(rng.integers(len(data) + 1))
        return "insert", bytes(data[:at] + rng.bytes(int(rng.integers(1, 40))) + data[at:])
    version, header, payload = container.read(original)
    header_length = struct.unpack_from("<I", original, 16)[0]
    header_bytes = original[container.PREAMBLE_SIZE: container.PREAMBLE_SIZE + header_length]
    if kind == 3:  # flip payload bits, re-sealed
        payload = bytearray(payload)
        for _ in range(int(rng.integers(1, 6))):
            payload[int(rng.integers(len(payload)))] ^= 1 << int(rng.integers(8))
        return "payload flips", seal(header_bytes, bytes(payload), version)
    if kind == 4:  # edit header fields, re-sealed
        what = []
        for _ in range(int(rng.integers(1, 4))):
            paths = [p for p in _leaves(header) if p]
            path = paths[int(rng.integers(len(paths)))]
            parent = _get(header, path[:-1])
            if rng.random() < 0.1 and isinstance(parent, dict):
                del parent[path[-1]]
                what.append(f"del {path}")
            else:
                parent[path[-1]] = _interesting(rng, parent[path[-1]])
                what.append(f"{path}={parent[path[-1]]!r}")
        try:
            return "header " + "; ".join(what), container.pack(header, payload, version)
        except (ValueError, TypeError, OverflowError):  # not JSON-serialisable: raw edit instead
            kind = 5
    if kind == 5:  # edit header bytes (JSON may break), re-sealed
        raw = bytearray(header_bytes)
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(len(raw)))] = int(rng.choice(list(b'0123456789-,:[]{}"e.')))
        return "header bytes", seal(bytes(raw), payload, version)
    layers = header["layers"]
    index = int(rng.integers(len(layers)))
    keys = sorted(layers[index]["streams"])
    key = keys[int(rng.integers(len(keys)))]
    if kind == 6:  # move a stream's address, re-sealed
        offset = int(rng.integers(len(payload) + 1))
        length = int(rng.integers(len(payload) - offset + 1))
        layers[index]["streams"][key] = [offset, length]
        return f"address {index}.{key}=[{offset},{length}]", container.pack(header, payload,
                                                                           version)
    if kind == 7:  # replace a stream with random bytes (or a cut of itself), laid out again
        offset, length = layers[index]["streams"][key]
        old = payload[offset: offset + length]
        new = (old[: int(rng.integers(length + 1))] + rng.bytes(int(rng.integers(0, 8)))
               if rng.random() < 0.5 else rng.bytes(int(rng.integers(0, 2 * length + 9))))
        return f"stream {index}.{key} <- {len(new)} bytes", reseal(original,
                                                                   streams={(index, key): new})
    if kind == 9:  # a size field set huge, with a symbol model that agrees with it
        return _size_attack(original, header, index, rng)
    # kind 8: a field or stream of one layer taken from another layer, laid out again
    other = int(rng.integers(len(layers)))
    fields = sorted(set(layers[index]) & set(layers[other]) - {"streams"})
    field = fields[int(rng.integers(len(fields)))]

    def edit(h):
        h["layers"][index][field] = h["layers"][other][field]
    return f"layer {index}.{field} <- layer {other}", reseal(original, edit)


def test_fuzzed_files_are_refused_or_decode_to_valid_networks(originals, tmp_path):
    originals = [data for data in originals if data is not None]  # resnet8 not registered
    warm = tmp_path / "warm.bcz"
    warm.write_bytes(originals[3])
    worker = DecoderWorker(warm, headroom=HEADROOM)
    failures, outcomes, slowest = [], {}, 0.0
    try:
        for case in range(CASES):
            rng = np.random.default_rng([SEED, case])
            original = originals[int(rng.integers(len(originals)))]
            description, data = mutate(original, rng)
            result = worker.run(data, timeout=60.0)
            outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
            slowest = max(slowest, result["seconds"])
            if result["outcome"] not in ("refused", "decoded") or result["seconds"] > CASE_SECONDS:
                failures.append(f"case {case} ({description}): {json.dumps(result)[:600]}")
            elif result["outcome"] == "refused" and "\n" in result["message"]:
                failures.append(f"case {case} ({description}): multi-line message")
    finally:
        worker.close()
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:10])
    # Most mutations must reach the decoder and be refused; some decode (a harmless edit).
    assert outcomes.get("refused", 0) > CASES // 2, outcomes
    print(f"{CASES} cases: {outcomes}, slowest {slowest:.3f} s")


def _size_attack(original: bytes, header: dict, index: int, rng) -> tuple[str, bytes]:
    """The shape of the issue's attacks: one count made huge and made consistent where a file
    can make it so (a symbol model whose counts sum to it, a kernel dimension without a
    bitmap), so that only the decoder's own bounds stand between it and the allocation."""
    layer = header["layers"][index]
    huge = int(rng.choice([2**20, 2**24, 2**26 + 1, 2**30, 2**31, 2**32 - 1]))
    field = ["kernel_shape", "num_positions", "num_values", "num_classes", "input_shape",
             "codebook_size", "value_width"][int(rng.integers(7))]
    streams = {}
    if field == "kernel_shape":
        shape = list(layer["kernel_shape"])
        shape[int(rng.integers(len(shape)))] = huge
        edit = {"kernel_shape": shape}
    elif field in ("num_positions", "num_values"):
        edit = {field: huge}
        which = "positions" if field == "num_positions" else "values"
        if which == "positions":
            edit["positions"] = ["bitmap", "gaps"][int(rng.integers(2))]
        else:
            edit["values_coding"] = "ans"
        values = [0] if rng.random() < 0.5 else [0, 1]
        counts = [huge] if len(values) == 1 else [huge - 1, 1]
        streams[(index, which + "_model")] = varint_model(values, counts)
        streams[(index, which)] = b"" if len(values) == 1 else rng.bytes(4) + b"\x01\0\0\0"
    elif field == "value_width":
        edit = {"values_coding": "fixed", "value_width": 0, "num_values": huge}
        streams[(index, "values")] = b""
    elif field == "codebook_size":
        edit = {field: huge}
    else:
        def top(h):
            h[field] = huge if field == "num_classes" else [huge, huge, 1]
        return f"size {field}={huge}", reseal(original, top)

    def apply(h):
        h["layers"][index].update(edit)
    return f"size {index}.{field}={huge}", reseal(original, apply, streams)
