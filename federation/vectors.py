"""The one codec for float vectors on the wire (`GlobalVector`): length, hash and finiteness.

A global model vector crosses the wire three ways (coordinator → site in Train/Evaluate tasks,
coordinator → operator in ExportRun, and back into the demo's scoring). Each receiver checks the
same three things, so a truncated, altered or non-finite vector is refused with one message
instead of being decoded differently in three places.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from federation.wire.v1 import federation_pb2

Float32Array = npt.NDArray[np.float32]


class VectorError(ValueError):
    """A wire vector that does not decode: wrong length, hash mismatch, NaN or infinity."""


def encode_vector(vector: npt.ArrayLike) -> federation_pb2.GlobalVector:
    """Little-endian float32 bytes with their length and SHA-256 (hex)."""
    array = np.ascontiguousarray(np.asarray(vector), dtype="<f4")
    if array.ndim != 1:
        raise VectorError(f"a wire vector is one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise VectorError("a wire vector must not contain NaN or infinity")
    data = array.tobytes()
    return federation_pb2.GlobalVector(
        float32_le=data, length=int(array.size), sha256=hashlib.sha256(data).hexdigest()
    )


def decode_vector(
    message: federation_pb2.GlobalVector, expected_length: int | None = None
) -> Float32Array:
    """The float32 vector of `message`, after every check; raises VectorError naming the cause.

    `expected_length` is what the receiver derives itself (a site: from the plan it accepted).
    """
    data = bytes(message.float32_le)
    if len(data) != 4 * message.length:
        raise VectorError(
            f"vector of {len(data)} bytes does not hold its stated {message.length} float32 values"
        )
    if expected_length is not None and message.length != expected_length:
        raise VectorError(
            f"vector of {message.length} values, but {expected_length} are expected here"
        )
    if message.sha256 and hashlib.sha256(data).hexdigest() != message.sha256:
        raise VectorError("vector bytes do not match their SHA-256")
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise VectorError("vector contains NaN or infinity")
    return vector


def vector_sha256(vector: npt.ArrayLike) -> str:
    """The SHA-256 (hex) a vector has on the wire, for logs and audit entries."""
    return hashlib.sha256(
        np.ascontiguousarray(np.asarray(vector), dtype="<f4").tobytes()
    ).hexdigest()
