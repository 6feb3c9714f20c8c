//! Measures classification cost per statement: `cargo run --release --example classify_cost`.
use std::time::Instant;

fn main() {
    let n = 20_000;
    let texts: Vec<String> =
        (0..n).map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", i * 7 + 1)).collect();
    let c = pgtrail_event::Classifier::new(1_000_000);
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(c.classify(s));
    }
    let miss = t.elapsed() / n;
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(c.classify(s));
    }
    let hit = t.elapsed() / n;
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(pg_query::parse(s, 0).unwrap());
    }
    let parse = t.elapsed() / n;
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(pg_query::fingerprint(s, 0, 0).unwrap());
    }
    let fp = t.elapsed() / n;
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(pg_query::scan_tokens(s).unwrap());
    }
    let scan = t.elapsed() / n;
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(pg_query::summary(s, 0, -1).unwrap());
    }
    let summary = t.elapsed() / n;
    println!("miss {miss:?} hit {hit:?} parse {parse:?} fingerprint {fp:?} scan {scan:?} summary {summary:?}");
}
