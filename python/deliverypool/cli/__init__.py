"""The `deliverypool` command: one module per subcommand in this package (classify, relay,
milter, queue, monitor, senders, dnsbl, dkim, demo), wired into one argument parser here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from deliverypool.cli.classify import finite_float, nameserver_argument, run_classify

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deliverypool",
        description="Route outbound mail to the normal or the high-risk delivery pool.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify",
        help="classify messages and print the pool each one goes through",
        description="Classify messages. PATH is a message file, an mbox file, a Maildir "
        "(or any folder of message files), or - for standard input.",
    )
    classify.add_argument("paths", nargs="+", metavar="PATH")
    classify.add_argument("--threshold", type=finite_float, default=5.0, metavar="T",
                          help="spam score above which mail is high-risk (default 5.0)")
    classify.add_argument("--score", type=finite_float, metavar="S",
                          help="spam score given by your filter, for every message")
    classify.add_argument("--score-header", metavar="NAME",
                          help="trust the score in this header (written only by your own filter)")
    classify.add_argument("--mail-from", metavar="ADDR",
                          help="envelope sender (MAIL FROM) for every message; '' or '<>' is the null sender")
    classify.add_argument("--tenant", metavar="ID", help="tenant whose threshold applies")
    classify.add_argument("--nameserver", action="append", default=[], type=nameserver_argument, metavar="HOST[:PORT]",
                          help="check the --mail-from domain with this nameserver (repeatable; default: the system's)")
    classify.add_argument("--no-dns", action="store_true", help="do not check the sender domain in DNS")
    classify.add_argument("--rspamd", metavar="URL",
                          help="score each message without --score or a --score-header field with rspamd at URL "
                          "(http://127.0.0.1:11333); its verdict goes into the JSON output")
    classify.add_argument("--rspamd-timeout", type=finite_float, default=5.0, metavar="SECONDS",
                          help="time allowed for each rspamd answer (default 5)")
    classify.add_argument("--json", action="store_true", help="print one JSON object per message")
    classify.set_defaults(handler=run_classify)

    relay = commands.add_parser("relay", help="run the relay: accept over SMTP, spool, deliver from each pool",
                                description="Run the relay with the configuration in a TOML file.")
    relay.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration")
    relay.add_argument("--loop", choices=["asyncio", "uvloop"], help="event loop (default: uvloop when installed)")
    relay.add_argument("--workers", type=int, metavar="N", help="worker processes (default: one per core)")
    relay.add_argument("--check", action="store_true",
                       help="check that the relay could start with this configuration here (extras, files, addresses, "
                       "Redis, the spool's space) and exit: 0 ok, 2 with one line per problem")
    relay.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: a worker's shard
    relay.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # internal: the shared socket
    relay.add_argument("--client-counts-fd", type=int, help=argparse.SUPPRESS)  # internal: connections per client
    relay.add_argument("--space-fd", type=int, help=argparse.SUPPRESS)  # internal: the shards' low-space flags
    relay.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # internal: written once the worker serves
    relay.set_defaults(
        handler=lambda args: _command("relay").relay_command(
            args.config, loop=args.loop, workers=args.workers, worker=args.worker, listen_fd=args.listen_fd,
            client_counts_fd=args.client_counts_fd, space_fd=args.space_fd, ready_fd=args.ready_fd, check=args.check
        )
    )

    milter = commands.add_parser("milter", help="run the Postfix milter: route each message to its pool's transport",
                                 description="Run the milter Postfix calls for each message (smtpd_milters): it adds "
                                 "the header that milter_header_checks turn into the transport of the message's pool.")
    milter.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration ([milter], [score], [policy], [dns])")
    milter.add_argument("--check", action="store_true",
                        help="check that the milter could start with this configuration here (pymilter, files, its address, "
                        "Redis) and exit: 0 ok, 2 with one line per problem")
    milter.set_defaults(handler=lambda args: _command("milter").milter_command(args.config, check=args.check))

    queue = commands.add_parser("queue", help="show what is in the spool",
                                description="List the messages and recipients in the relay's spool.")
    queue.add_argument("--config", metavar="PATH", help="the relay's TOML configuration (for its spool directory)")
    queue.add_argument("--spool", metavar="DIR", help="the spool directory (default: the config's, else ./spool)")
    queue.set_defaults(handler=lambda args: _command("queue").queue_command(args.config, spool_directory=args.spool))

    monitor = commands.add_parser("monitor", help="per-tenant message and DSN rates and active surges, live",
                                  description="Show a running relay's per-tenant rates and DSN surges (from its admin listener).")
    monitor.add_argument("--admin", metavar="HOST:PORT", help="the relay's [admin] address (default: --config's, else 127.0.0.1:9425)")
    monitor.add_argument("--config", metavar="PATH", help="the relay's TOML configuration: its [admin] address, token_file or token_env")
    add_admin_arguments(monitor)
    monitor.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    monitor.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh every S seconds (default 2)")
    monitor.set_defaults(
        handler=lambda args: _command("monitor").monitor_command(
            args.admin, config_path=args.config, token_name=args.token_name, cacert=args.cacert, cert=args.cert, key=args.key,
            as_json=args.json, interval=args.interval,
        )
    )

    senders = commands.add_parser("senders", help="list or release the senders the sender limits restricted",
                                  description="The restricted senders, from the relay's state (its state database, or [state] redis).")
    senders_actions = senders.add_subparsers(dest="senders_action", required=True, metavar="ACTION")
    senders_list = senders_actions.add_parser("list", help="the restricted senders")
    senders_list.add_argument("--tenant", metavar="T", help="only this tenant's senders")
    senders_release = senders_actions.add_parser("release", help="lift a sender's restriction, on every worker and node")
    senders_release.add_argument("address", metavar="ADDRESS", help="the sender: its address or AUTH identity (any case)")
    for action in (senders_list, senders_release):
        action.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration")
        action.add_argument("--admin", nargs="?", const="", metavar="HOST:PORT",
                            help="through the running relay's admin API (audited, with the token of --config or "
                            "DELIVERYPOOL_ADMIN_TOKEN) instead of its state directly; without HOST:PORT, --config's [admin] address")
        add_admin_arguments(action)
        action.add_argument("--json", action="store_true", help="print JSON")
    senders.set_defaults(
        handler=lambda args: _command("senders").senders_command(
            args.senders_action, args.config, tenant=getattr(args, "tenant", None), address=getattr(args, "address", None), as_json=args.json,
            admin=args.admin, token_name=args.token_name, cacert=args.cacert, cert=args.cert, key=args.key,
        )
    )
    dnsbl = commands.add_parser("dnsbl", help="the blocklist watch of the pools' source addresses",
                                description="Blocklist (DNSBL) lookups of every source address of every pool in the [dnsbl] zones.")
    dnsbl_commands = dnsbl.add_subparsers(dest="dnsbl_command", required=True, metavar="ACTION")
    dnsbl_check = dnsbl_commands.add_parser("check", help="check every address in every zone now and print address x zone",
                                            description="Check every source address in every [dnsbl] zone now (test points first) "
                                            "and print a table of address x zone. Exit status 1 when an address of a pool but the "
                                            "high-risk one is listed or a zone failed its test points.")
    dnsbl_check.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration ([dnsbl], [pools], [dns])")
    dnsbl_check.add_argument("--json", action="store_true", help="print one JSON object")
    dnsbl_check.set_defaults(handler=lambda args: _command("dnsbl").check_command(args.config, as_json=args.json))

    dkim = commands.add_parser("dkim", help="DKIM keys: make one, check the published ones",
                               description="Make a DKIM key pair, or check the configured keys against what DNS publishes.")
    dkim_commands = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = dkim_commands.add_parser("keygen", help="write a private key and print the TXT record to publish",
                                      description="Write a new private key (PEM, mode 0600, never over an existing file) and print "
                                      "the TXT record to publish at SELECTOR._domainkey.DOMAIN and the [[dkim.keys]] table.")
    keygen.add_argument("--domain", required=True, help="the signing domain (d=)")
    keygen.add_argument("--selector", required=True, help="the selector (s=)")
    keygen.add_argument("--algorithm", choices=["ed25519", "rsa"], default="rsa",
                        help="rsa (default: every receiver verifies it) or ed25519 (RFC 8463; sign with both while receivers catch up)")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size, 2048 to 4096 (default 2048)")
    keygen.add_argument("--out", required=True, metavar="FILE", help="where to write the private key")
    keygen.set_defaults(handler=lambda args: _command("dkim").keygen_command(
        args.domain, args.selector, algorithm=args.algorithm, bits=args.bits, out=args.out))
    dkim_check = dkim_commands.add_parser("check", help="look every configured selector up in DNS and compare it with its key",
                                          description="Look each [[dkim.keys]] selector up through the [dns] resolver and compare the "
                                          "published key with the key file. Exit status 1 unless every one is ok.")
    dkim_check.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration ([dkim], [dns])")
    dkim_check.add_argument("--json", action="store_true", help="print one JSON object")
    dkim_check.set_defaults(handler=lambda args: _command("dkim").check_command(args.config, as_json=args.json))

    demo = commands.add_parser("demo", help="run the relay on loopback with a mixed workload and show the routing",
                               description="Start the relay with two loopback pools (normal from 127.0.0.2, "
                               "high-risk from 127.0.0.3), loopback sinks and a local DNS server, send ordinary "
                               "mail, spam, DSNs and mail from a domain without records, and show where each went.")
    demo.add_argument("--scale", type=int, default=10, metavar="N", help="workload size: N x (40 ordinary, 10 spam, 8 DSN, 5 no-records, ...) messages (default 10)")
    demo.add_argument("--keep-running", action="store_true", help="keep the relay and its admin listener running after the demo (Ctrl-C stops)")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="show the relay's log lines (INFO and up) on stderr as they happen; by default they are held "
                      "back and shown only when the demo finds a problem, so that they do not cut into the report")
    demo.set_defaults(handler=lambda args: _command("demo").demo_command(scale=args.scale, keep_running=args.keep_running, verbose=args.verbose))
    return parser


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a command that talks to the admin API (cli/admin_client.py)."""
    parser.add_argument("--token-name", metavar="NAME", help="which entry of the configuration's token_file or token_env to send (default: the first)")
    parser.add_argument("--cacert", metavar="FILE", help="CA certificate(s) the listener's HTTPS certificate is checked against")
    parser.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for a listener with [admin] client_ca")
    parser.add_argument("--key", metavar="FILE", help="the client certificate's key (default: in --cert)")


def _command(name: str) -> Any:
    # Imported on use: `classify` should not pay for loading the SMTP stack.
    return importlib.import_module(f"deliverypool.cli.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `deliverypool classify ... | head` is normal use, not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
