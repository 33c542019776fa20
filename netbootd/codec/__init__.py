"""Pure protocol codecs: bytes in, values out (no sockets, no clock, no logging)."""
