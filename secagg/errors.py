"""Typed errors: every refusal names what was wrong, so callers can log it and drop the peer."""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error this package raises on bad input or a cheating peer."""


class InvalidConfig(SecAggError, ValueError):
    """A session or quantisation configuration that cannot be run safely."""


class InvalidInput(SecAggError, ValueError):
    """The caller passed a value of the wrong shape, type or range (not a peer's fault)."""


class MalformedMessage(SecAggError):
    """A payload that does not parse: wrong magic, kind, version or length."""


class WrongSession(SecAggError):
    """A message bound to another session, round or configuration (e.g. a replay)."""


class StageError(SecAggError):
    """A call or message that does not belong to the stage the state machine is in."""


class ProtocolViolation(SecAggError):
    """A well-formed message whose content breaks the protocol (duplicates, unknown ids)."""


class InvalidSignature(SecAggError):
    """A missing or invalid signature: a peer's key or the survivor set was not vouched for."""


class DecryptionFailed(SecAggError):
    """A share ciphertext failed authentication (tampered, replayed, or for someone else)."""


class InsufficientParticipants(SecAggError):
    """Fewer than the threshold of participants remain, so the protocol cannot continue safely."""


class InsufficientShares(SecAggError):
    """Shamir reconstruction was asked for with fewer than t shares (or inconsistent shares)."""
