"""Instructions per message of SPF + DMARC from a warm cache, for callgrind (repeatable under
load, unlike timings): runs the `auth` group's warm path (benches/test_auth.py) N times.

    for n in 0 2000; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/auth-$n.out \\
            .venv/bin/python benches/auth_callgrind.py --messages $n [--baseline]
    done
    # (Ir at 2000 - Ir at 0) / 2000 = instructions per message

`--baseline` runs pyspf + the plain-Python DMARC instead. `--route` / `--route-without`: the
routing of each message by `ScoredRouter.route` with and without `[auth]` (the group's
`test_route_auth`), whose difference is what authentication adds to routing. Needs a release
build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.test_auth import CLIENT, HELO, messages, ours, pyspf_lookup, python_dmarc, warm_cache  # noqa: E402
from deliverypool.auth.dns import AuthDns  # noqa: E402
from deliverypool.lookup.resolver import Resolver  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--baseline", action="store_true", help="pyspf + plain-Python DMARC")
    parser.add_argument("--route", action="store_true", help="ScoredRouter.route with [auth]")
    parser.add_argument("--route-without", action="store_true", help="ScoredRouter.route without [auth]")
    args = parser.parse_args()
    if args.route or args.route_without:
        import asyncio

        from benches.test_auth import route_batch, routing_messages, scored_router

        router, _ = scored_router(args.route)
        pool = routing_messages()
        loop = asyncio.new_event_loop()
        loop.run_until_complete(route_batch(router, pool[:1]))
        loop.run_until_complete(route_batch(router, [pool[i % len(pool)] for i in range(args.messages)]))
        return
    dns = AuthDns(Resolver(cache=warm_cache()))
    pool = messages()
    batch = [pool[i % len(pool)] for i in range(args.messages)]
    if args.baseline:
        import publicsuffixlist
        import spf

        spf.DNSLookup = pyspf_lookup(dns.resolver.cache)
        psl = publicsuffixlist.PublicSuffixList()
        # Warm pyspf's and the PSL's imports and first-use costs outside the measured count.
        spf.query(i=CLIENT, s=pool[0][0], h=HELO).check()
        for sender, from_domain in batch:
            result, _, _ = spf.query(i=CLIENT, s=sender, h=HELO).check()
            python_dmarc(dns.resolver.cache, psl, from_domain, sender.rpartition("@")[2], result)
    else:
        ours(dns, pool[:1])
        results = ours(dns, batch)
        assert all(r == "pass" for r in results)


if __name__ == "__main__":
    main()
