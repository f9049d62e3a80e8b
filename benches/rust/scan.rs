//! `cargo bench --bench scan`: the header scanner against the `mail-parser` crate and against a
//! bare memchr pass (counting line feeds), over the header blocks of the shared corpus
//! (`../shared/corpus/sisimai`). Throughput is header bytes per second on one core.
//!
//! Groups:
//! * `headers`: each message's header block alone (up to and including its blank line), the
//!   same bytes for every contender. `deliverypool` is `scan::index`, what routing runs: every
//!   field found, the routing fields kept as borrowed spans, Content-Type's media type parsed,
//!   nothing decoded until read. `deliverypool/decode-all` is `scan::scan`: the same, then every
//!   kept field unfolded and decoded into owned strings (Subject RFC 2047-decoded, Content-Type
//!   parameters parsed), as `deliverypool.scan()` returns them to Python. `mail-parser/raw` is
//!   `MessageParser::new().parse_headers`, every field kept as raw text (its cheapest setting);
//!   `mail-parser/mime+subject` also parses the MIME headers and decodes Subject, closer to the
//!   scanner's work. `memchr-floor` only counts `\n`: the floor any header reader stays above.
//! * `messages`: whole messages, throughput in messages. `deliverypool/classify` is
//!   `policy::classify` (scan, MIME part headers, DSN verdict, decision); `mail-parser/parse`
//!   parses the whole message (MIME tree, bodies decoded).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mail_parser::{HeaderName, MessageParser};

use deliverypool::policy::{classify, Envelope, Policy};
use deliverypool::scan::{index, scan};

fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/sisimai");
    assert!(dir.is_dir(), "the shared corpus is missing: expected it at {}", dir.display());
    dir
}

/// Splits mbox data at `From ` lines that start the data or follow a blank line, as
/// `deliverypool.mail.sources.split_mbox` does, dropping the separator lines.
fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    if !data.starts_with(b"From ") {
        return vec![data.to_vec()];
    }
    let mut starts = vec![0];
    for (i, window) in data.windows(7).enumerate() {
        if window == b"\n\nFrom " {
            starts.push(i + 2);
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).map_or(data.len(), |&next| next - 1);
            let body = &data[start..end];
            let line_end = memchr::memchr(b'\n', body).map_or(body.len(), |i| i + 1);
            body[line_end..].to_vec()
        })
        .collect()
}

/// Every message of the corpus: maildir `.eml` files, then the messages of the mbox files.
fn corpus_messages() -> Vec<Vec<u8>> {
    let root = corpus_dir();
    let mut paths: Vec<PathBuf> = Vec::new();
    for sub in std::fs::read_dir(root.join("maildir")).unwrap() {
        for file in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "eml") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut messages: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut mailboxes: Vec<PathBuf> = std::fs::read_dir(root.join("mailbox")).unwrap().map(|e| e.unwrap().path()).collect();
    mailboxes.sort();
    for path in mailboxes {
        let data = std::fs::read(&path).unwrap();
        if !data.is_empty() {
            messages.extend(split_mbox(&data));
        }
    }
    assert!(messages.len() > 800, "the corpus shrank");
    messages
}

/// The header block of each message, as the scanner delimits it (through the blank line).
fn header_blocks(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .filter_map(|m| {
            // After an mbox From_ line, which ends in CRLF, LF or a bare CR.
            let start = match m.starts_with(b"From ").then(|| memchr::memchr2(b'\n', b'\r', m)).flatten() {
                Some(i) if m[i..].starts_with(b"\r\n") => i + 2,
                Some(i) => i + 1,
                None if m.starts_with(b"From ") => m.len(),
                None => 0,
            };
            let len = scan(m, None).header_length;
            (len > 0).then(|| m[start..start + len].to_vec())
        })
        .collect()
}

fn headers(c: &mut Criterion) {
    let blocks = header_blocks(&corpus_messages());
    let bytes: usize = blocks.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("headers");
    group.throughput(Throughput::Bytes(bytes as u64));

    group.bench_function("deliverypool", |b| {
        b.iter(|| {
            for block in &blocks {
                black_box(index(black_box(block), None));
            }
        });
    });
    group.bench_function("deliverypool/decode-all", |b| {
        b.iter(|| {
            for block in &blocks {
                black_box(scan(black_box(block), None));
            }
        });
    });
    let raw = MessageParser::new();
    group.bench_function("mail-parser/raw", |b| {
        b.iter(|| {
            for block in &blocks {
                black_box(raw.parse_headers(black_box(block)));
            }
        });
    });
    let mime = MessageParser::new().with_mime_headers().header_text(HeaderName::Subject);
    group.bench_function("mail-parser/mime+subject", |b| {
        b.iter(|| {
            for block in &blocks {
                black_box(mime.parse_headers(black_box(block)));
            }
        });
    });
    group.bench_function("memchr-floor", |b| {
        b.iter(|| {
            let mut lines = 0;
            for block in &blocks {
                lines += memchr::memchr_iter(b'\n', black_box(block)).count();
            }
            black_box(lines)
        });
    });
    group.finish();
}

fn messages(c: &mut Criterion) {
    let messages = corpus_messages();
    let mut group = c.benchmark_group("messages");
    group.throughput(Throughput::Elements(messages.len() as u64));
    let policy = Policy::default();
    group.bench_function("deliverypool/classify", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(classify(black_box(message), &Envelope::default(), &policy).unwrap());
            }
        });
    });
    let parser = MessageParser::default();
    group.bench_function("mail-parser/parse", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(parser.parse(black_box(message)));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, headers, messages);
criterion_main!(benches);
