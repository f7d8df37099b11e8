"""DHCP formats that carry the WireServer address (option 245): pure parsers and a builder.

- raw DHCP messages (a reply we received, dhcpcd's binary `.lease` files);
- dhclient lease files (`option unknown-245 a8:3f:81:10;`);
- systemd-networkd / NetworkManager-internal lease files (`OPTION_245=A83F8110`).
Nothing here reads files or touches the network: `wire.endpoint` does.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import struct
from collections.abc import Mapping
from typing import NamedTuple

from wire.errors import WireError

WIRESERVER_OPTION = 245
MAGIC_COOKIE = b"\x63\x82\x53\x63"
_HEADER = 236  # fixed BOOTP part before the magic cookie
_MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
                  7: "RELEASE", 8: "INFORM"}


class DhcpMessage(NamedTuple):
    """A parsed DHCP message: the header fields we use and every option's raw bytes."""

    op: int
    xid: bytes
    your_address: str
    server_address: str
    client_mac: bytes
    options: Mapping[int, bytes]

    @property
    def message_type(self) -> str | None:
        """DISCOVER, OFFER, ACK, ... (option 53), or None for plain BOOTP."""
        value = self.options.get(53)
        return _MESSAGE_TYPES.get(value[0]) if value else None

    @property
    def wireserver_endpoint(self) -> str | None:
        """The WireServer address from option 245, or None when absent or malformed."""
        value = self.options.get(WIRESERVER_OPTION)
        return address_from_option(value) if value is not None else None

    @property
    def routers(self) -> tuple[str, ...]:
        """Option 3, the default gateways."""
        value = self.options.get(3, b"")
        return tuple(str(ipaddress.IPv4Address(value[i:i + 4]))
                     for i in range(0, len(value) - 3, 4))


def address_from_option(value: bytes) -> str | None:
    """An IPv4 address from a 4-byte option value (None when it is not 4 bytes)."""
    if len(value) != 4:
        return None
    return str(ipaddress.IPv4Address(value))


def parse_dhcp_message(data: bytes) -> DhcpMessage:
    """Parse a raw DHCP message (RFC 2131/2132); WireError when it is not one."""
    if len(data) < _HEADER + len(MAGIC_COOKIE):
        raise WireError(f"DHCP message of {len(data)} bytes is shorter than its fixed header")
    if data[_HEADER:_HEADER + 4] != MAGIC_COOKIE:
        raise WireError("DHCP message has no magic cookie: not a DHCP message")
    op, _htype, hlen = data[0], data[1], data[2]
    options: dict[int, bytes] = {}
    position = _HEADER + 4
    while position < len(data):
        code = data[position]
        if code == 0:  # pad
            position += 1
            continue
        if code == 255:  # end
            break
        if position + 1 >= len(data):
            raise WireError(f"DHCP option {code} is truncated")
        length = data[position + 1]
        value = data[position + 2:position + 2 + length]
        if len(value) != length:
            raise WireError(f"DHCP option {code} is truncated ({len(value)} of {length} bytes)")
        # RFC 3396: a repeated option continues the previous one.
        options[code] = options.get(code, b"") + value
        position += 2 + length
    return DhcpMessage(
        op=op,
        xid=data[4:8],
        your_address=str(ipaddress.IPv4Address(data[16:20])),
        server_address=str(ipaddress.IPv4Address(data[20:24])),
        client_mac=data[28:28 + min(hlen, 16)],
        options=options,
    )


def build_discover(mac: bytes, xid: bytes) -> bytes:
    """A DHCPDISCOVER from `mac` asking for option 245 (and the usual network options)."""
    if len(mac) != 6 or len(xid) != 4:
        raise ValueError("a DHCP DISCOVER needs a 6-byte MAC and a 4-byte transaction id")
    header = struct.pack("!BBBB4sHH4s4s4s4s16s64s128s",
                         1, 1, 6, 0,            # BOOTREQUEST, Ethernet, MAC length, hops
                         xid, 0, 0x8000,        # secs, flags: broadcast (we have no address)
                         bytes(4), bytes(4), bytes(4), bytes(4),
                         mac.ljust(16, b"\0"), bytes(64), bytes(128))
    options = (MAGIC_COOKIE
               + bytes([53, 1, 1])                                   # DHCPDISCOVER
               + bytes([61, 7, 1]) + mac                             # client id: Ethernet + MAC
               + bytes([55, 6, 1, 3, 6, 15, 121, WIRESERVER_OPTION])  # parameters wanted
               + bytes([255]))
    packet = header + options
    return packet.ljust(300, b"\0")  # BOOTP minimum size; some relays drop shorter packets


# -- lease files ----------------------------------------------------------------------------

_LEASE_BLOCK = re.compile(r"lease\s*\{(.*?)\}", re.S)
_OPTION_245 = re.compile(r"option\s+unknown-245\s+(.+?);")
_EXPIRE = re.compile(r"^\s*expire\s+(.+?);", re.M)


def option_bytes(value: str) -> bytes:
    """dhclient's rendering of an unknown option: `a8:3f:81:10`, or a quoted string with
    octal escapes when every byte happened to be printable."""
    text = value.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        body = text[1:-1]
        out = bytearray()
        i = 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body):
                octal = re.match(r"[0-7]{1,3}", body[i + 1:])
                if octal:
                    out.append(int(octal.group(0), 8) & 0xFF)
                    i += 1 + len(octal.group(0))
                    continue
                if ord(body[i + 1]) > 0xFF:
                    raise WireError(f"dhclient option value {value!r} escapes a character "
                                    "that is not a byte")
                out.append(ord(body[i + 1]))
                i += 2
                continue
            out.append(ord(body[i]) & 0xFF)
            i += 1
        return bytes(out)
    try:
        return bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        raise WireError(f"dhclient option value {value!r} is neither hex bytes nor a "
                        "string") from None


def _lease_expiry(block: str) -> datetime.datetime | None:
    """When a dhclient lease expires (UTC); None for `never` or no expire line."""
    match = _EXPIRE.search(block)
    if match is None:
        return None
    value = match.group(1).strip()
    if value == "never":
        return None
    if value.startswith("epoch"):
        seconds = value.split()[1] if len(value.split()) > 1 else ""
        if seconds.isascii() and seconds.isdigit():
            try:
                return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC)
            except (OverflowError, OSError, ValueError):
                pass  # past what a time_t or a datetime holds
        raise WireError(f"dhclient lease: unreadable expire {value!r}")
    parts = value.split()
    try:  # "<weekday> YYYY/MM/DD HH:MM:SS", in UTC
        stamp = datetime.datetime.strptime(" ".join(parts[1:3]), "%Y/%m/%d %H:%M:%S")
    except ValueError:
        raise WireError(f"dhclient lease: unreadable expire {value!r}") from None
    return stamp.replace(tzinfo=datetime.UTC)


def endpoint_from_dhclient_leases(text: str, now: datetime.datetime) -> str | None:
    """The option-245 address of the newest unexpired lease in a dhclient lease file.

    dhclient appends renewed leases, so the last valid block is the newest.
    """
    found = None
    for match in _LEASE_BLOCK.finditer(text):
        block = match.group(1)
        option = _OPTION_245.search(block)
        if option is None:
            continue
        try:
            expires = _lease_expiry(block)
            address = address_from_option(option_bytes(option.group(1)))
        except WireError:
            continue  # one unreadable lease does not hide the others
        if address is not None and (expires is None or expires > now):
            found = address
    return found


def endpoint_from_networkd_lease(text: str) -> str | None:
    """The option-245 address of a systemd-networkd (or NetworkManager internal) lease."""
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == f"OPTION_{WIRESERVER_OPTION}":
            try:
                return address_from_option(bytes.fromhex(value.strip()))
            except ValueError:
                return None
    return None


def endpoint_from_dhcpcd_lease(data: bytes) -> str | None:
    """The option-245 address of a dhcpcd `.lease` file (the raw DHCP message it received)."""
    try:
        return parse_dhcp_message(data).wireserver_endpoint
    except WireError:
        return None
