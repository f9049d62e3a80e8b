"""Stand-ins that start in-process for the demo and the tests: an authoritative DNS server for
a zone (:mod:`~deliverypool.testing.zoneserver`) and a fixed MX table
(:mod:`~deliverypool.testing.static_mx`). Nothing here is used by a production relay."""
