#!/usr/bin/env python3
"""Runs Xen 4.17's verify-stream-v2 as shipped, with one Python 3 repair.

Under Python 3 the verifier's check of EMULATOR_XENSTORE_DATA records
compares the record's last byte (bytes) with a str, so every non-empty
record of that type is refused as "not NUL terminated". The check is
replaced by one that compares bytes; it enforces the same rules (emulator
header, NUL termination, key/value pairs).

Usage: verify.py VERIFIER [verify-stream-v2 arguments...]
"""
import runpy
import struct
import sys

from xen.migration import libxl
from xen.migration.verify import RecordError


def xenstore_data(self, content):
    head = struct.calcsize(libxl.EMULATOR_HEADER_FORMAT)
    if len(content) < head:
        raise RecordError(f"Length must be at least {head} bytes, got {len(content)}")
    emulator, index = struct.unpack(libxl.EMULATOR_HEADER_FORMAT, content[:head])
    name = libxl.emulator_id_to_str.get(emulator)
    if name is None:
        raise RecordError(f"Unrecognised emulator id 0x{emulator:x}")
    self.info(f"Emulator Xenstore Data ({name}, idx {index})")
    body = content[head:]
    if not body:
        return
    if not body.endswith(b"\0"):
        raise RecordError("Data not NUL terminated")
    strings = body[:-1].split(b"\0")
    if len(strings) % 2 != 0:
        raise RecordError(f"Expected an even number of strings, got {len(strings)}")


libxl.VerifyLibxl.verify_record_emulator_xenstore_data = xenstore_data
libxl.record_verifiers[libxl.REC_TYPE_emulator_xenstore_data] = xenstore_data

script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
