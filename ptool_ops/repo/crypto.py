"""Client-side encryption: AES-256-GCM in authenticated chunks (the ``cryptography`` package).

Stream layout (version 1)::

    header  = b"PTAEAD\\x00\\x01" | chunk_size (u32 BE) | salt (16 bytes)      -- 28 bytes
    chunk i = AES-256-GCM(subkey, nonce = i as 12 bytes BE,
                          aad = header | final flag (1 byte), plaintext[i]) | tag (16 bytes)

``subkey = HKDF-SHA256(key, salt, info="ptool-ops repo aes-256-gcm v1")``: a fresh key per
object, so counter nonces never repeat under one key. Every chunk but the last carries
``chunk_size`` bytes of plaintext; the last one (possibly empty) has the final flag set, so
a truncated, reordered or extended stream fails authentication. The key id recorded in
manifests (``HMAC-SHA256(key, "ptool-ops key id")``, first 8 bytes, hex) lets a wrong key be
reported before a single byte is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from typing import TYPE_CHECKING

from ptool_ops.errors import ConfigError
from ptool_ops.repo.errors import CorruptObject

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALGORITHM = "aes-256-gcm-chunked"
MAGIC = b"PTAEAD\x00\x01"
HEADER_SIZE = len(MAGIC) + 4 + 16
TAG_SIZE = 16
DEFAULT_CHUNK = 1024 * 1024
_INFO = b"ptool-ops repo aes-256-gcm v1"


def parse_key(text: str) -> bytes:
    """A 32-byte key written as 64 hex digits or base64 (``openssl rand -base64 32``)."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(
            "the backup encryption key is not 32 bytes written as base64 or 64 hex digits.",
            hint="Generate one with 'openssl rand -base64 32' and store it as backup_key "
            "or behind backup_key_secret.",
        )
    return raw


def key_id(key: bytes) -> str:
    return hmac.new(key, b"ptool-ops key id", hashlib.sha256).hexdigest()[:16]


def _subkey(key: bytes, salt: bytes) -> AESGCM:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(key)
    return AESGCM(derived)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


class Encryptor:
    def __init__(self, key: bytes, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.chunk_size = chunk_size
        salt = os.urandom(16)
        self.header = MAGIC + struct.pack(">I", chunk_size) + salt
        self._aead = _subkey(key, salt)
        self._buffer = bytearray()
        self._index = 0
        self._started = False

    def _seal(self, plaintext: bytes, final: bool) -> bytes:
        aad = self.header + (b"\x01" if final else b"\x00")
        sealed = self._aead.encrypt(_nonce(self._index), plaintext, aad)
        self._index += 1
        return sealed

    def update(self, data: bytes) -> bytes:
        out = []
        if not self._started:
            self._started = True
            out.append(self.header)
        self._buffer += data
        # keep at least one byte back: only finalize() knows which chunk is the last
        while len(self._buffer) > self.chunk_size:
            chunk = bytes(self._buffer[: self.chunk_size])
            del self._buffer[: self.chunk_size]
            out.append(self._seal(chunk, final=False))
        return b"".join(out)

    def finalize(self) -> bytes:
        head = b"" if self._started else self.header
        self._started = True
        last = self._seal(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        return head + last


class Decryptor:
    def __init__(self, key: bytes, name: str) -> None:
        self._key = key
        self._name = name
        self._buffer = bytearray()
        self._header: bytes | None = None
        self._aead: AESGCM | None = None
        self._chunk = 0
        self._index = 0

    def _fail(self) -> CorruptObject:
        return CorruptObject(
            f"{self._name} fails authentication: it was changed after it was written, "
            "or it was encrypted with another key.",
            hint="Check the backup key; if it is right, the stored object is damaged — "
            "use another backup.",
        )

    def _open(self, sealed: bytes, final: bool) -> bytes:
        from cryptography.exceptions import InvalidTag

        assert self._aead is not None and self._header is not None
        aad = self._header + (b"\x01" if final else b"\x00")
        try:
            plain = self._aead.decrypt(_nonce(self._index), sealed, aad)
        except InvalidTag:
            raise self._fail() from None
        self._index += 1
        return plain

    def update(self, data: bytes) -> bytes:
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                return b""
            header = bytes(self._buffer[:HEADER_SIZE])
            if not header.startswith(MAGIC):
                raise CorruptObject(
                    f"{self._name} is not an encrypted ptool-ops object (bad header).",
                    hint="The object is damaged or not encrypted; use another backup.",
                )
            del self._buffer[:HEADER_SIZE]
            self._header = header
            (self._chunk,) = struct.unpack(">I", header[len(MAGIC) : len(MAGIC) + 4])
            self._aead = _subkey(self._key, header[len(MAGIC) + 4 :])
        out = []
        sealed_size = self._chunk + TAG_SIZE
        while len(self._buffer) > sealed_size:
            sealed = bytes(self._buffer[:sealed_size])
            del self._buffer[:sealed_size]
            out.append(self._open(sealed, final=False))
        return b"".join(out)

    def finalize(self) -> bytes:
        if self._header is None or len(self._buffer) < TAG_SIZE:
            raise CorruptObject(f"{self._name} is truncated.", hint="Use another backup.")
        last = self._open(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        return last
