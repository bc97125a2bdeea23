#!/usr/bin/env python3
"""Prints the time span (last minus first timestamp, seconds) of a classic pcap file."""
import struct
import sys

data = open(sys.argv[1], "rb").read()
magic = data[:4]
little = magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
if not little and magic not in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
    sys.exit(f"{sys.argv[1]}: not a classic pcap file")
fmt = "<IIII" if little else ">IIII"
at, first, last = 24, None, None
while at + 16 <= len(data):
    sec, frac, incl, _ = struct.unpack(fmt, data[at:at + 16])
    t = sec + frac / (1e9 if nano else 1e6)
    first = t if first is None else first
    last = t
    at += 16 + incl
print(0.0 if first is None else last - first)
