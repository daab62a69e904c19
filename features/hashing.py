"""crossrank's id hash: the ``hash`` id mapping, defined here and nowhere else.

A raw id becomes a table row as ``row = h(id) mod num_embeddings``, where ``h`` is a 64-bit hash that is
part of the project's data contract: the same id gives the same row in every process, on every machine,
with any Python/numpy/pandas/pyarrow version and any ``PYTHONHASHSEED``. Changing anything below re-maps
every hashed id, i.e. invalidates the embeddings of every trained model: do not change it; add a new
mapping type instead.

All arithmetic is on unsigned 64-bit integers modulo 2**64.

Integer ids (any width, signed or unsigned)
    The id's value is widened to int64 and its 64-bit two's-complement bit pattern ``x`` is taken as
    unsigned (so ``-1`` is ``0xFFFFFFFFFFFFFFFF``; an int8/int32/int64/uint32 column holding 7 gives the
    same ``x = 7``; uint64 values >= 2**63 keep their bit pattern). Then ``h = finalise(x)``.

String ids
    ``x`` = 64-bit FNV-1a over the id's UTF-8 bytes, first byte first::

        x = 0xCBF29CE484222325                      # FNV-1a 64-bit offset basis
        for byte in id.encode("utf-8"):
            x = ((x ^ byte) * 0x00000100000001B3) mod 2**64   # FNV 64-bit prime

    (the empty string gives the offset basis). Then ``h = finalise(x)``. No normalisation is applied:
    ``"42"`` and the integer ``42`` are different ids, and so are NFC and NFD forms of the same text.
    Binary (bytes) ids are hashed the same way over their bytes.

finalise (the splitmix64 output function, after xoring a fixed seed)::

    z = (x ^ SEED) + 0x9E3779B97F4A7C15             # SEED = 0x63726F7373726B31, ASCII "crossrk1"
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    h = z ^ (z >> 31)

Every step of ``finalise`` is invertible, so distinct integer ids never share ``h`` (only rows collide).

Rows
    ``row = h mod num_embeddings`` (as an unsigned 64-bit remainder), returned as int64.

:func:`hash_reference` is the same algorithm in plain Python, byte by byte, for checking.

Example::

    hash_ids(np.array([7, -1]))                  # uint64 hashes
    hash_rows(pa.array(["alice", ""]), 1000)     # int64 rows in [0, 1000)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MASK64 = (1 << 64) - 1
SEED = 0x63726F7373726B31  # ASCII "crossrk1"
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x00000100000001B3

_U = np.uint64


def finalise(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x ^ SEED``, vectorised over a uint64 array (returns a new array)."""
    z = (x ^ _U(SEED)) + _U(GOLDEN_GAMMA)
    z ^= z >> _U(30)
    z *= _U(MIX1)
    z ^= z >> _U(27)
    z *= _U(MIX2)
    z ^= z >> _U(31)
    return z


def _int_bits(values: np.ndarray) -> np.ndarray:
    """Integer ids of any width -> their int64 two's-complement bit patterns as uint64."""
    if values.dtype == np.uint64:
        return values
    return values.astype(np.int64, copy=False).view(np.uint64)


def _is_text(t: pa.DataType) -> bool:
    """String or binary Arrow types (their bytes are hashed)."""
    return any(
        check(t)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_string_view,
            pa.types.is_binary,
            pa.types.is_large_binary,
        )
    )


def fnv1a_arrow(values: pa.Array) -> np.ndarray:
    """64-bit FNV-1a of each string of an Arrow string/binary array (no nulls), as uint64.

    Vectorised over rows: rows are processed in cache-sized blocks of consecutive rows (so their bytes are
    close together); within a block, rows are ordered longest first and the loop runs over byte positions,
    each step updating the rows at least that long (a prefix). Cost: O(total bytes) plus one numpy step
    per byte position of each block's longest string.
    """
    if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_type = np.int32
    elif pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_type = np.int64
    else:
        return fnv1a_arrow(values.cast(pa.large_string()))
    n = len(values)
    _, offset_buf, data_buf = values.buffers()[:3]
    offsets = np.frombuffer(offset_buf, dtype=offset_type, count=values.offset + n + 1)[values.offset :]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = offsets[1:] - starts
    out = np.empty(n, dtype=np.uint64)
    for lo in range(0, n, _BLOCK):
        block = slice(lo, lo + _BLOCK)
        out[block] = _fnv1a_block(data, starts[block], lengths[block])
    return out


_BLOCK = 1 << 15  # rows per block: the block's hashes, positions and bytes stay in the CPU cache


def _fnv1a_block(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a of one block of strings (``data[starts[i] : starts[i] + lengths[i]]``)."""
    order = np.argsort(-lengths, kind="stable")  # longest first
    pos, lengths = starts[order], lengths[order]
    longest = int(lengths[0]) if len(lengths) else 0
    # active[j]: how many rows are longer than j (a prefix of the longest-first order).
    active = np.searchsorted(-lengths, -np.arange(longest), side="left")
    h = np.full(len(pos), FNV_OFFSET, dtype=np.uint64)
    byte = np.empty(len(pos), dtype=np.uint8)
    prime = _U(FNV_PRIME)
    for j in range(longest):
        k = int(active[j])
        head = h[:k]
        np.take(data, pos[:k], out=byte[:k], mode="clip")  # positions are in range; clip avoids buffering
        np.bitwise_xor(head, byte[:k], out=head, casting="unsafe")
        np.multiply(head, prime, out=head)
        pos[:k] += 1
    out = np.empty(len(h), dtype=np.uint64)
    out[order] = h
    return out


def hash_ids(values: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """The 64-bit hash ``h`` (see the module docstring) of each id, as a uint64 array.

    Args:
        values: a flat array of integer ids (numpy or Arrow, any int width) or string ids (Arrow string /
            large_string / binary, or a numpy array of Python ``str``); no nulls.

    Raises:
        TypeError: ids that are neither integers nor strings (floats, booleans, nested lists).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_integer(values.type):
            return finalise(_int_bits(values.to_numpy(zero_copy_only=False)))
        if pa.types.is_dictionary(values.type):
            return hash_ids(values.cast(values.type.value_type))
        if _is_text(values.type):
            return finalise(fnv1a_arrow(values))
        raise TypeError(
            f"ids of Arrow type {values.type} cannot be hashed (ids must be integers or strings)."
        )
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return finalise(_int_bits(arr))
    if arr.dtype.kind in "OUS":
        kind = pa.large_binary() if arr.dtype.kind == "S" else pa.large_string()
        try:
            as_arrow = pa.array(arr, type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"ids of numpy dtype {arr.dtype} are not all strings ({e}).") from None
        return hash_ids(as_arrow)
    raise TypeError(f"ids of numpy dtype {arr.dtype} cannot be hashed (ids must be integers or strings).")


def hash_rows(values: pa.Array | pa.ChunkedArray | np.ndarray, num_embeddings: int) -> np.ndarray:
    """``h(id) mod num_embeddings`` of each id, as int64 rows in ``[0, num_embeddings)``."""
    if num_embeddings < 1:
        raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}.")
    return (hash_ids(values) % _U(num_embeddings)).astype(np.int64)


def hash_reference(value: int | str | bytes) -> int:
    """The same hash in plain Python, one byte at a time: the executable form of the module docstring."""
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise ValueError(f"integer id {value} does not fit in 64 bits.")
        x = value & MASK64
    else:
        x = FNV_OFFSET
        for byte in value.encode("utf-8") if isinstance(value, str) else value:
            x = ((x ^ byte) * FNV_PRIME) & MASK64
    z = ((x ^ SEED) + GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)
