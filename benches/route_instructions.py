"""Instructions per routed message, for callgrind (repeatable under load, unlike timings):
`route()` of benches/test_route.py over the corpus, PASSES times after one warm-up pass.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m benches.route_instructions MODE 1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m benches.route_instructions MODE 4

The difference of the two runs' instruction counts, divided by 3 x the messages it prints, is
the cost of one `Router.route` call. MODE: `default` (`route(m, mail_from=...)`, the group's
`deliverypool` benchmark; it runs on a checkout from before rules too), `two-pools` and `rules`
(a tenant and a recipient per message, under the default policy and under `rules_policy()`),
`scored` (the relay's own call, `ScoredRouter.route(m, Submission(...))` without a score source
or `[auth]`: what Relay.accept pays; it runs on a checkout from before authentication too).
"""

from __future__ import annotations

import asyncio
import sys

from benches.conftest import CORPUS
from deliverypool.corpus import corpus_paths
from deliverypool.mail.sources import read_messages
from deliverypool.routing.router import Router


def main(argv: list[str]) -> int:
    mode, passes = argv[0], int(argv[1])
    from benches import test_route

    messages = [message for path in corpus_paths(CORPUS) for _, message in read_messages(str(path))]
    senders = [f"user{i}@{test_route.DOMAINS[i % len(test_route.DOMAINS)]}" for i in range(len(messages))]
    if mode == "scored":
        from deliverypool.routing.scores import ScoredRouter, Submission

        scored = ScoredRouter(Router(test_route.warm_resolver()))

        async def run_scored(router: Router, messages: list[bytes], senders: list[str]) -> int:
            high_risk = 0
            for message, sender in zip(messages, senders):
                routed = await scored.route(message, Submission(sender, ("bob@dest.test",)))
                high_risk += routed.decision.high_risk
            return high_risk

        router, run = scored.router, run_scored
    elif mode == "default":
        router, run = Router(test_route.warm_resolver()), test_route.route_all
    else:
        router = Router(test_route.warm_resolver(), policy=test_route.rules_policy() if mode == "rules" else None)
        run = test_route.route_with_rules
    loop = asyncio.new_event_loop()
    high_risk = 0
    for _ in range(passes + 1):
        high_risk = loop.run_until_complete(run(router, messages, senders))
    print(f"{len(messages)} messages per pass, {high_risk} high-risk")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
