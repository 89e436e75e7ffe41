//! Criterion micro-benchmarks of respipe's per-command hot path, through the public API only:
//! request framing, reply framing, the batch policy, request encoding and shard placement.
//!
//! ```sh
//! cargo bench --bench hot_path                 # all of them, about a minute
//! cargo bench --bench hot_path -- reply_scan   # a subset (regex on the names)
//! ```
//!
//! Measurement times are short (2 s, 20 samples) so the whole file finishes quickly on a shared
//! 2-core machine; the figures are for comparing before/after a change on the same machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use respipe::batch::{Batch, BatchPolicy};
use respipe::config::Upstream;
use respipe::resp::{
    encode_request, ReplyScanner, RequestLimits, RequestScanner, DEFAULT_MAX_REPLY_DEPTH,
};
use respipe::shard::{Distribution, Hash, Placement, Server, Spec};

/// A typical small request: what redis-benchmark's SET sends (`SET key:000123 xxx`).
const SET_FRAME: &[u8] = b"*3\r\n$3\r\nSET\r\n$10\r\nkey:000123\r\n$3\r\nxxx\r\n";

fn short(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
}

/// Scans every frame of `buf` the way a session does (scan, then skip the frame's length) with
/// `scan`, which gives a frame's length or `None` for "need more bytes" or an error; returns the
/// number of frames.
fn scan_all(buf: &[u8], mut scan: impl FnMut(&[u8]) -> Option<usize>) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos < buf.len() {
        let Some(len) = scan(&buf[pos..]) else {
            break;
        };
        pos += len;
        n += 1;
    }
    n
}

fn scan_requests(scanner: &mut RequestScanner, buf: &[u8]) -> usize {
    scan_all(buf, |b| scanner.scan(b).ok().flatten().map(|f| f.len))
}

fn scan_replies(scanner: &mut ReplyScanner, buf: &[u8]) -> usize {
    scan_all(buf, |b| scanner.scan(b).ok().flatten().map(|f| f.len))
}

fn request_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_scan");
    short(&mut g);

    let mut scanner = RequestScanner::new(RequestLimits::default());
    assert_eq!(scan_requests(&mut scanner, SET_FRAME), 1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_1", |b| {
        b.iter(|| scan_requests(&mut scanner, black_box(SET_FRAME)))
    });

    // 50 different SETs in one buffer: what one read of a pipelining client carries.
    let mut pipeline = Vec::new();
    for i in 0..50 {
        pipeline.extend_from_slice(&encode_request(&[
            b"SET".to_vec(),
            format!("key:{:06}", 123 + i).into_bytes(),
            b"xxx".to_vec(),
        ]));
    }
    assert_eq!(scan_requests(&mut scanner, &pipeline), 50);
    g.throughput(Throughput::Elements(50));
    g.bench_function("set_pipeline_50", |b| {
        b.iter(|| scan_requests(&mut scanner, black_box(&pipeline)))
    });
    g.finish();
}

fn reply_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_scan");
    short(&mut g);
    let mut scanner = ReplyScanner::new(DEFAULT_MAX_REPLY_DEPTH);

    let simple: &[u8] = b"+OK\r\n";
    let bulk: &[u8] = b"$3\r\nabc\r\n";
    let mut array = b"*100\r\n".to_vec();
    for i in 0..100 {
        array.extend_from_slice(format!("$10\r\nkey:{i:06}\r\n").as_bytes());
    }
    let mib = 1 << 20;
    let mut big = format!("${mib}\r\n").into_bytes();
    big.resize(big.len() + mib, b'x');
    big.extend_from_slice(b"\r\n");

    for (name, buf) in [("ok", simple), ("bulk_3", bulk), ("array_100", &array[..])] {
        assert_eq!(scan_replies(&mut scanner, buf), 1, "{name}");
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| scan_replies(&mut scanner, black_box(buf)))
        });
    }
    assert_eq!(scan_replies(&mut scanner, &big), 1);
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("bulk_1mib_whole", |b| {
        b.iter(|| scan_replies(&mut scanner, black_box(&big)))
    });
    // The same 1 MiB reply arriving in 16 KiB reads: the scanner is called on every longer prefix
    // and must resume, not rescan (64 calls in all).
    g.bench_function("bulk_1mib_16k_reads", |b| {
        b.iter(|| {
            let mut end = 0;
            loop {
                end = (end + 16 * 1024).min(big.len());
                match scanner.scan(black_box(&big[..end])) {
                    Ok(None) => continue,
                    other => break other.map(|f| f.map(|f| f.len)),
                }
            }
        })
    });
    g.finish();
}

fn batch_policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    short(&mut g);
    let policy = BatchPolicy {
        max_commands: 1024,
        max_bytes: 1 << 20,
        window: Duration::ZERO,
    };
    let now = Instant::now();
    // 100 requests: push each, ask whether to write, as the upstream driver does; then take.
    g.throughput(Throughput::Elements(100));
    g.bench_function("push_100_flush_reason", |b| {
        b.iter(|| {
            let mut batch = Batch::default();
            let mut flushes = 0usize;
            for _ in 0..100 {
                batch.push(1, black_box(SET_FRAME.len()), now);
                if batch.flush_reason(black_box(&policy), now, false).is_some() {
                    flushes += 1;
                }
            }
            black_box(batch.take());
            flushes
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_request");
    short(&mut g);
    let args: [&[u8]; 3] = [b"SET", b"key:000123", b"xxx"];
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_3_args", |b| {
        b.iter(|| encode_request(black_box(&args)))
    });
    assert_eq!(&encode_request(&args)[..], SET_FRAME);
    g.finish();
}

/// Which shard a key goes to, once per forwarded command in sharded mode: three servers, keys like
/// redis-benchmark's, with twemproxy's default ketama + fnv1a_64 and with modula + md5.
fn placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement");
    short(&mut g);
    let keys: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("key:{:06}", i * 7919).into_bytes())
        .collect();
    g.throughput(Throughput::Elements(keys.len() as u64));
    for (name, hash, distribution) in [
        ("ketama_fnv1a_64", Hash::Fnv1a64, Distribution::Ketama),
        ("modula_md5", Hash::Md5, Distribution::Modula),
    ] {
        let spec = Spec {
            servers: (0..3)
                .map(|i| Server {
                    upstream: Upstream::tcp("127.0.0.1", 7000 + i),
                    name: None,
                    weight: 1,
                })
                .collect(),
            hash,
            distribution,
            hash_tag: Some(*b"{}"),
            eject: None,
        };
        let placement = Placement::new(&spec, &[true; 3]);
        g.bench_function(format!("server_for_100_{name}"), |b| {
            b.iter(|| {
                keys.iter()
                    .map(|k| placement.server_for(black_box(k)).unwrap_or(0))
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    request_scan,
    reply_scan,
    batch_policy,
    encode,
    placement
);
criterion_main!(benches);
