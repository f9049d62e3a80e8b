"""A tiny authoritative DNS server on loopback, in-process: the demo's source of DNS answers
on a machine without NSD, and a helper for tests.

It serves master-file zones over UDP (dnspython parses them): answers with the AA flag,
follows CNAMEs inside its zones, answers NODATA and NXDOMAIN with the zone's SOA in the
authority section (so negative caching per RFC 2308 works), REFUSED for names outside its
zones, and SERVFAIL for names listed in `servfail`. It binds 127.0.0.1 only by default and is
meant for test and demo zones, not for serving the Internet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone


class ZoneServer(asyncio.DatagramProtocol):
    def __init__(self, zones: Mapping[str, str], *, servfail: Iterable[str] = ()) -> None:
        self.zones = {
            dns.name.from_text(origin): dns.zone.from_text(text, origin=origin, relativize=False)
            for origin, text in zones.items()
        }
        self.servfail = {dns.name.from_text(name) for name in servfail}
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def set_zone(self, origin: str, text: str) -> None:
        """Serves `text` as the zone `origin` from the next query on (a new zone or a reload)."""
        self.zones[dns.name.from_text(origin)] = dns.zone.from_text(text, origin=origin, relativize=False)

    # --- serving -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Binds UDP `host`:`port` (0: any free port) and returns the address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport
        address = transport.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        self.queries += 1
        response = self.answer(query)
        if self.transport is not None:
            self.transport.sendto(response.to_wire(max_size=65535), addr)

    # --- answering -----------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        for _ in range(8):  # CNAME hops
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            zone = self._zone_for(name)
            if zone is None:
                if response.answer:  # a CNAME leading out of our zones: return the chain
                    return response
                response.set_rcode(dns.rcode.REFUSED)
                return response
            response.flags |= dns.flags.AA
            node = zone.get_node(name)
            if node is not None:
                rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
                if rdataset is not None:
                    response.answer.append(_rrset(name, rdataset))
                    return response
                cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
                if cname is not None and rdtype != dns.rdatatype.CNAME:
                    response.answer.append(_rrset(name, cname))
                    name = cname[0].target
                    continue
            elif not any(other.is_subdomain(name) for other in zone.nodes):
                response.set_rcode(dns.rcode.NXDOMAIN)
            origin = zone.origin
            assert origin is not None  # from_text always sets it
            soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
            if soa is not None:
                response.authority.append(_rrset(origin, soa))
            return response
        response.set_rcode(dns.rcode.SERVFAIL)
        return response

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        best: tuple[int, dns.zone.Zone] | None = None
        for origin, zone in self.zones.items():
            if name.is_subdomain(origin) and (best is None or len(origin) > best[0]):
                best = (len(origin), zone)
        return None if best is None else best[1]


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)  # type: ignore[no-untyped-call]  # dnspython's Set.update has no annotations
    return rrset
