//! Lines per second through the pgAudit reader (assembling entries and turning them into
//! events), per format, on the reference logs in testdata/pgaudit repeated in memory.
//! Run by bench/ingest.sh: `cargo run --release -p pgtrail-pgaudit --example parse_bench [ROUNDS]`.

use std::time::Instant;

use pgtrail_pgaudit::{Assembler, Format, Prefix, to_event};

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/pgaudit");
    let formats = [
        ("stderr", "stderr.log", Format::Stderr(Prefix::compile("%m [%p] %q%u@%d ").expect("prefix"))),
        ("csvlog", "csvlog.csv", Format::Csvlog),
        ("jsonlog", "jsonlog.json", Format::Jsonlog),
    ];
    println!("{:<8} {:>12} {:>12} {:>14}", "format", "lines", "events", "lines/s (median)");
    for (name, file, format) in formats {
        let text = std::fs::read_to_string(dir.join(file)).expect("reference log");
        let lines: Vec<&str> = text.lines().collect();
        let copies = 2000;
        let mut rates = Vec::new();
        let mut events = 0usize;
        for _ in 0..rounds {
            let mut assembler = Assembler::new(format.clone());
            events = 0;
            let started = Instant::now();
            let mut n = 0u64;
            for _ in 0..copies {
                for line in &lines {
                    n += 1;
                    for entry in assembler.push_line(line, n).into_iter().flatten() {
                        if let Ok(Some(_)) = to_event(&entry) {
                            events += 1;
                        }
                    }
                }
            }
            rates.push(n as f64 / started.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!("{:<8} {:>12} {:>12} {:>14.0}", name, lines.len() * copies, events, rates[rates.len() / 2]);
    }
}
