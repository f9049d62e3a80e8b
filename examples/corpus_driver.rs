//! A driver over the shared corpus, for checking that an optimisation changes nothing and for
//! counting instructions (`valgrind --tool=callgrind` counts the same whatever the load).
//!
//! ```text
//! cargo run --release --example corpus_driver > before.txt      # every output, as text
//! ... change the code ...
//! cargo run --release --example corpus_driver > after.txt && cmp before.txt after.txt
//!
//! cargo build --release --example corpus_driver
//! valgrind --tool=callgrind target/release/examples/corpus_driver classify 1
//! valgrind --tool=callgrind target/release/examples/corpus_driver classify 4
//! ```
//! The second pair of runs differs only by three passes of `classify` over the corpus: their
//! difference in instructions, divided by 3 x the number of files, is the cost per message.
//! `index N` does the same for `scan::index` over the header blocks alone; `rules N` and
//! `two-pools N` classify with a tenant and a recipient per message, under a relay's rule set
//! (`rules_policy`, the one of benches/test_route.py) and under today's two pools.
//!
//! The dump covers each corpus file and mutated copies of it (truncations, inserted, deleted and
//! changed bytes): `scan` with a score header, and `classify` under four envelopes and two
//! policies. Lines starting with ` fields ` (the header block, and the Message-ID and From
//! address a `Decision` reads back) came after the rest: `grep -v '^ fields '` gives the dump
//! as it was before them.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use deliverypool::policy::{classify, DomainStatus, Envelope, Policy};
use deliverypool::pools::{PoolClass, PoolSpec, RuleSpec};
use deliverypool::scan::{header_block, index, scan, ContentType};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/sisimai");
    assert!(root.is_dir(), "the shared corpus is missing: expected it at {}", root.display());
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(root.join("maildir")).unwrap() {
        paths.extend(std::fs::read_dir(dir.unwrap().path()).unwrap().map(|f| f.unwrap().path()));
    }
    paths.extend(std::fs::read_dir(root.join("mailbox")).unwrap().map(|f| f.unwrap().path()));
    paths.sort();
    paths.into_iter().map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

/// The message, three truncations and five copies with one byte inserted, removed or changed.
fn mutations(msg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![msg.to_vec()];
    let n = msg.len();
    out.extend((1..4).map(|k| msg[..n * k / 4].to_vec()));
    let mut seed = n as u64 * 2_654_435_761 + 1;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5 {
        if n == 0 {
            break;
        }
        let mut copy = msg.to_vec();
        let pos = (random() as usize) % n;
        match random() % 4 {
            0 => {
                copy.remove(pos);
            }
            1 => copy.insert(pos, b"\n\r:;\"=\\(-\xff \t"[(random() % 12) as usize]),
            2 => {
                copy.insert(pos, b'\n');
                copy.insert(pos, b'\n');
            }
            _ => copy[pos] = (random() & 0xff) as u8,
        }
        out.push(copy);
    }
    out
}

fn dump(out: &mut String, msg: &[u8]) {
    let f = scan(msg, Some("x-spam-score"));
    let ct = |c: &ContentType| format!("{} {:?}", c.mime_type(), c.params().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
    writeln!(out, "start={} len={} fields={} ct={:?}", f.header_start, f.header_length, f.field_count, f.content_type.as_ref().map(ct)).unwrap();
    writeln!(
        out,
        "from={:?} sender={:?} rp={:?} subj={:?} as={:?} prec={:?} xfr={:?} mid={:?}",
        f.from, f.sender, f.return_path, f.subject, f.auto_submitted, f.precedence, f.x_failed_recipients, f.message_id
    )
    .unwrap();
    writeln!(out, "score={:?} markers={:?} qmail={} defects={:?}", f.score_header_values, f.marker_fields, f.qmail_bounce, f.defects).unwrap();
    for p in &f.parts {
        writeln!(out, " part {} {}", p.depth, ct(&p.content_type)).unwrap();
    }
    for r in &f.recipients {
        writeln!(out, " rcpt {r:?}").unwrap();
    }
    let with_header = Policy { score_header: Some("X-Spam-Score".into()), ..Policy::default() }.validated().unwrap();
    let plain = Policy::default();
    let envelopes = [
        Envelope::default(),
        Envelope { mail_from: Some("<>"), ..Default::default() },
        Envelope {
            mail_from: Some("a@b.example"),
            score: Some(6.0),
            tenant: Some("t"),
            sender_domain: Some(DomainStatus::NoRecords),
            ..Default::default()
        },
        Envelope { untrusted_client: true, sender_domain: Some(DomainStatus::Unknown), ..Default::default() },
    ];
    let block = header_block(msg);
    assert_eq!(block, (f.header_start, f.header_start + f.header_length), "header_block disagrees with scan");
    let mut fields = None;
    for (i, envelope) in envelopes.iter().enumerate() {
        for policy in [&plain, &with_header] {
            let d = classify(msg, envelope, policy).unwrap();
            let read = (d.message_id(msg).map(std::borrow::Cow::into_owned), d.header_from(msg));
            assert_eq!(read.0, f.message_id, "Decision::message_id disagrees with scan");
            assert!(fields.as_ref().map_or(true, |first| *first == read), "fields differ between envelopes");
            fields = Some(read);
            let dsn = d.detection.dsn.as_ref().map(|v| format!("{:?} {:?} {} {:?}", v.kind, v.signals, v.strength, v.recipients));
            writeln!(
                out,
                " c{i} pool={} hr={} reasons={:?} kind={:?} dsn={:?} score={:?} src={:?} thr={} sd={:?} defects={:?}",
                d.pool, d.high_risk, d.reasons, d.detection.report_kind, dsn, d.score, d.score_source, d.threshold, d.sender_domain, d.defects
            )
            .unwrap();
        }
    }
    if let Some((_, from)) = fields {
        let from = from.as_ref().map(|a| (a.as_str(), a.domain()));
        writeln!(out, " fields block={block:?} from={from:?}").unwrap();
    }
}

/// A relay's rule set: benches/test_route.py's RULES_POLICY.
fn rules_policy() -> Policy {
    let pool = |name: &str, class, tenant: Option<&str>| PoolSpec { name: name.into(), class, tenant: tenant.map(Into::into) };
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let rule = |name: &str, pool: &str| RuleSpec { name: Some(name.into()), pool: pool.into(), ..RuleSpec::default() };
    Policy {
        pools: vec![
            pool("normal", PoolClass::Normal, None),
            pool("high-risk", PoolClass::HighRisk, None),
            pool("acme-out", PoolClass::Normal, Some("acme")),
            pool("acme-risky", PoolClass::HighRisk, Some("acme")),
            pool("gmail", PoolClass::Normal, None),
            pool("outlook", PoolClass::Normal, None),
            pool("bulk", PoolClass::Normal, None),
            pool("bounces", PoolClass::HighRisk, None),
        ],
        route_header: Some("X-Stream".into()),
        rules: vec![
            RuleSpec { tenants: strings(&["acme"]), ..rule("acme", "acme-out") },
            RuleSpec { tenants: strings(&["acme"]), ..rule("acme-risky", "acme-risky") },
            RuleSpec { reasons: strings(&["dsn"]), report_kinds: strings(&["dsn"]), ..rule("bounces", "bounces") },
            RuleSpec { header_values: strings(&["newsletter", "campaign"]), ..rule("newsletters", "bulk") },
            RuleSpec { min_size: Some(1 << 20), ..rule("big", "bulk") },
            RuleSpec { sender_domains: strings(&["*.news.example", "mailer.example"]), ..rule("news-senders", "bulk") },
            RuleSpec { recipient_domains: strings(&["gmail.com", "googlemail.com"]), ..rule("gmail", "gmail") },
            RuleSpec { recipient_domains: strings(&["outlook.com", "hotmail.com", "*.outlook.com"]), ..rule("outlook", "outlook") },
            RuleSpec { tenants: strings(&["globex"]), recipient_domains: strings(&["gmail.com"]), ..rule("globex-gmail", "gmail") },
            RuleSpec { reasons: strings(&["spam-score"]), ..rule("spam", "high-risk") },
            RuleSpec { report_kinds: strings(&["mdn", "auto-reply"]), ..rule("mdn", "normal") },
            RuleSpec { max_size: Some(2048), sender_domains: strings(&["*.example"]), ..rule("small", "normal") },
        ],
        ..Policy::default()
    }
    .validated()
    .expect("the rule set compiles")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let passes = || args.get(2).map_or(1, |s| s.parse::<usize>().expect("a number of passes"));
    let messages = corpus();
    match args.get(1).map(String::as_str) {
        Some("classify") => {
            let policy = Policy::default();
            let mut high_risk = 0;
            for _ in 0..passes() {
                for (_, m) in &messages {
                    high_risk += usize::from(classify(m, &Envelope::default(), &policy).unwrap().high_risk);
                }
            }
            println!("{high_risk} high-risk decisions");
        }
        Some(mode @ ("rules" | "two-pools")) => {
            let policy = if mode == "rules" { rules_policy() } else { Policy::default() };
            let tenants = [Some("acme"), Some("globex"), Some("initech"), None];
            let recipients = ["bob@dest.test", "ann@gmail.com", "joe@hotmail.com", "eve@mail.outlook.com", "sam@example.org"];
            let mut high_risk = 0;
            for _ in 0..passes() {
                for (i, (_, m)) in messages.iter().enumerate() {
                    let to = [recipients[i % 5]];
                    let envelope = Envelope { mail_from: Some("user@sender1.example"), tenant: tenants[i % 4], recipients: &to, ..Envelope::default() };
                    high_risk += usize::from(classify(m, &envelope, &policy).unwrap().high_risk);
                }
            }
            println!("{high_risk} high-risk decisions");
        }
        Some("index") => {
            let blocks: Vec<&[u8]> = messages
                .iter()
                .map(|(_, m)| {
                    let (start, body) = header_block(m);
                    &m[start..body]
                })
                .collect();
            let mut fields = 0;
            for _ in 0..passes() {
                for block in &blocks {
                    fields += index(std::hint::black_box(block), None).field_count;
                }
            }
            println!("{fields} fields in {} header bytes per pass", blocks.iter().map(|b| b.len()).sum::<usize>());
        }
        None => {
            let mut out = String::new();
            let mut inputs = 0;
            for (name, msg) in &messages {
                for (k, m) in mutations(msg).iter().enumerate() {
                    writeln!(out, "== {name} #{k}").unwrap();
                    dump(&mut out, m);
                    inputs += 1;
                }
            }
            print!("{out}");
            eprintln!("{inputs} inputs");
        }
        Some(other) => panic!("unknown mode {other:?}: expected classify N, index N, rules N, two-pools N, or nothing"),
    }
}
