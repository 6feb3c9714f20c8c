//! The pgAudit log reader on arbitrary input: every format, line by line, then each
//! entry into an event. It may reject input, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtrail_pgaudit::{Assembler, Format, Prefix, to_event};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let formats = [
        Format::Stderr(Prefix::compile("%m [%p] %q%u@%d ").expect("valid prefix")),
        Format::Stderr(Prefix::compile("%t [%p-%l] %q%u@%d,app=%a,client=%r,sid=%c ").expect("valid prefix")),
        Format::Csvlog,
        Format::Jsonlog,
    ];
    for format in formats {
        let mut assembler = Assembler::new(format);
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            entries.extend(assembler.push_line(line, n as u64 + 1));
        }
        entries.extend(assembler.flush());
        for entry in entries.into_iter().flatten() {
            let _ = to_event(&entry);
        }
    }
    let _ = pgtrail_pgaudit::AuditRecord::parse(&text);
    let _ = Prefix::compile(&text).map(|p| p.parse(&text));
});
