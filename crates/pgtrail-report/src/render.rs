//! A report's three forms. HTML: one self-contained page (styles inline, the chart an
//! inline SVG, no script, nothing fetched) that prints well. CSV: RFC 4180 rows, then the
//! integrity statement as `#` lines. JSON: one document, rows as objects.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::select::{COLUMNS, Summary};
use crate::{Format, Integrity, Spec};

/// What is known before the rows: the request, when, and the summary.
pub(crate) struct Head<'a> {
    pub spec: &'a Spec,
    pub generated: DateTime<Utc>,
    pub summary: &'a Summary,
}

impl Head<'_> {
    /// The report's parameters as (name, value) pairs, for every form.
    fn parameters(&self) -> Vec<(&'static str, String)> {
        let spec = self.spec;
        let mut p = vec![
            ("kind", spec.kind.name().to_owned()),
            ("from", spec.from.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("to", spec.to.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("archive", spec.archive.clone()),
            ("generated", self.generated.to_rfc3339_opts(SecondsFormat::Secs, true)),
        ];
        for (name, value) in [("database user", &spec.user), ("person", &spec.person), ("object", &spec.object)] {
            if let Some(value) = value {
                p.push((name, value.clone()));
            }
        }
        p
    }
}

/// Where a report's parts go, in order: `begin`, every `row`, `end`.
pub(crate) trait Sink {
    fn begin(&mut self, head: &Head) -> io::Result<()>;
    fn row(&mut self, cells: &[String]) -> io::Result<()>;
    fn end(&mut self, head: &Head, written: u64, integrity: &Integrity) -> io::Result<()>;
}

pub(crate) fn sink<'a>(format: Format, out: &'a mut dyn Write) -> Box<dyn Sink + 'a> {
    match format {
        Format::Html => Box::new(Html { out }),
        Format::Csv => Box::new(Csv { out }),
        Format::Json => Box::new(Json { out, rows: 0 }),
    }
}

/// Text made safe inside HTML elements and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;font-size:12px;margin:24px;color:#111}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:20px 0 6px;border-bottom:1px solid #999}\
table{border-collapse:collapse;width:100%}th,td{border:1px solid #bbb;padding:2px 4px;text-align:left;vertical-align:top}\
th{background:#eee}table.rows{font-size:10px}table.rows td{overflow-wrap:anywhere}table.rows td:first-child{white-space:nowrap}\
td.text{width:35%;font-family:'DejaVu Sans Mono',monospace;white-space:pre-wrap}\
.facts td:first-child{width:160px;font-weight:bold}.groups{display:flex;flex-wrap:wrap;gap:12px}\
.groups table{width:auto;min-width:200px}.ok{color:#064;font-weight:bold}.bad{color:#a00;font-weight:bold}\
.integrity p{margin:2px 0;font-family:'DejaVu Sans Mono',monospace;white-space:pre-wrap}\
svg{width:100%;height:auto}@media print{body{margin:0}thead{display:table-header-group}tr{break-inside:avoid}}";

struct Html<'a> {
    out: &'a mut dyn Write,
}

impl Html<'_> {
    /// The activity chart: one bar per bucket, an inline SVG.
    fn chart(&mut self, summary: &Summary) -> io::Result<()> {
        let (width, height, left, bottom) = (900.0_f64, 200.0_f64, 50.0_f64, 30.0_f64);
        let n = summary.series.len().max(1) as f64;
        let max = summary.series.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1) as f64;
        let bar = ((width - left) / n).min(40.0);
        write!(
            self.out,
            "<svg viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"events over time\">\
             <line x1=\"{left}\" y1=\"{y0}\" x2=\"{width}\" y2=\"{y0}\" stroke=\"#333\"/>\
             <text x=\"{lx}\" y=\"12\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
             <text x=\"{lx}\" y=\"{y0}\" font-size=\"11\" text-anchor=\"end\">0</text>",
            y0 = height - bottom,
            lx = left - 4.0,
        )?;
        for (i, (at, count)) in summary.series.iter().enumerate() {
            let h = (height - bottom - 4.0) * (*count as f64) / max;
            write!(
                self.out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#3a6ea5\">\
                 <title>{} {count}</title></rect>",
                left + bar * i as f64 + bar * 0.1,
                height - bottom - h,
                (bar * 0.8).max(0.5),
                at.to_rfc3339_opts(SecondsFormat::Secs, true),
            )?;
        }
        if let (Some((first, _)), Some((last, _))) = (summary.series.first(), summary.series.last()) {
            write!(
                self.out,
                "<text x=\"{left}\" y=\"{height}\" font-size=\"11\">{}</text>\
                 <text x=\"{width}\" y=\"{height}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
                first.format("%Y-%m-%d %H:%M"),
                last.format("%Y-%m-%d %H:%M"),
            )?;
        }
        write!(self.out, "</svg>")
    }
}

impl Sink for Html<'_> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        let kind = head.spec.kind;
        let s = head.summary;
        write!(
            self.out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>pgtrail report: {title}</title><style>{STYLE}</style></head><body>\
             <h1>pgtrail report: {title}</h1><p>{description}</p><table class=\"facts\">",
            title = escape(kind.title()),
            description = escape(kind.description()),
        )?;
        for (name, value) in head.parameters() {
            write!(self.out, "<tr><td>{}</td><td>{}</td></tr>", escape(name), escape(&value))?;
        }
        write!(
            self.out,
            "</table><h2>Summary</h2><table class=\"facts\">\
             <tr><td>events</td><td>{}</td></tr><tr><td>people</td><td>{}</td></tr>\
             <tr><td>database users</td><td>{}</td></tr><tr><td>sessions</td><td>{}</td></tr></table>\
             <div class=\"groups\">",
            s.rows, s.people, s.users, s.sessions
        )?;
        for (title, top) in &s.groups {
            write!(self.out, "<table><thead><tr><th>{}</th><th>events</th></tr></thead><tbody>", escape(title))?;
            for (value, n) in top {
                let value = if value.is_empty() { "(none)" } else { value };
                write!(self.out, "<tr><td>{}</td><td>{n}</td></tr>", escape(value))?;
            }
            write!(self.out, "</tbody></table>")?;
        }
        write!(self.out, "</div>")?;
        if head.spec.kind == crate::Kind::Coverage {
            write!(
                self.out,
                "<h2>Silences: no event for more than {} s</h2><p>The capture writes a heartbeat every few seconds: \
                 a silence means it was not running, or its events are missing.</p>",
                head.spec.gap_secs
            )?;
            if s.silences.is_empty() {
                write!(self.out, "<p>None.</p>")?;
            } else {
                write!(
                    self.out,
                    "<table><thead><tr><th>instance</th><th>last event before</th><th>first event after</th><th>seconds</th></tr></thead><tbody>"
                )?;
                for gap in &s.silences {
                    write!(
                        self.out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(&gap.instance),
                        escape(&gap.from),
                        escape(&gap.to),
                        gap.seconds
                    )?;
                }
                write!(self.out, "</tbody></table>")?;
            }
        }
        write!(self.out, "<h2>Activity over time (events per {})</h2>", bucket_name(s.bucket_secs))?;
        self.chart(s)?;
        write!(self.out, "<h2>Events</h2><table class=\"rows\"><thead><tr>")?;
        for (_, heading) in COLUMNS {
            write!(self.out, "<th>{}</th>", escape(heading))?;
        }
        writeln!(self.out, "</tr></thead><tbody>")
    }

    fn row(&mut self, cells: &[String]) -> io::Result<()> {
        self.out.write_all(b"<tr>")?;
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            let class = if i == last { " class=\"text\"" } else { "" };
            write!(self.out, "<td{class}>{}</td>", escape(cell))?;
        }
        self.out.write_all(b"</tr>\n")
    }

    fn end(&mut self, head: &Head, written: u64, integrity: &Integrity) -> io::Result<()> {
        write!(self.out, "</tbody></table>")?;
        if written < head.summary.rows {
            write!(
                self.out,
                "<p>The first {written} of {} events are listed; the CSV and JSON forms list them all.</p>",
                head.summary.rows
            )?;
        }
        let (class, verdict) = if integrity.verified { ("ok", "VERIFIED") } else { ("bad", "NOT VERIFIED") };
        write!(
            self.out,
            "<h2>Integrity statement: <span class=\"{class}\">{verdict}</span></h2><div class=\"integrity\">"
        )?;
        for line in integrity.lines() {
            write!(self.out, "<p>{}</p>", escape(&line))?;
        }
        writeln!(
            self.out,
            "<p>This file is signed: its detached signature is in the file of the same name ending in .sig; \
             check both with: pgtrail report verify FILE --verify-key KEY.pub</p></div></body></html>"
        )
    }
}

/// A chart bucket's size in words: `15 minutes`, `hour`, `4 days`.
fn bucket_name(secs: i64) -> String {
    match secs {
        s if s % 86_400 == 0 && s > 86_400 => format!("{} days", s / 86_400),
        86_400 => "day".into(),
        s if s % 3600 == 0 && s > 3600 => format!("{} hours", s / 3600),
        3600 => "hour".into(),
        60 => "minute".into(),
        s => format!("{} minutes", s / 60),
    }
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

struct Csv<'a> {
    out: &'a mut dyn Write,
}

impl Sink for Csv<'_> {
    fn begin(&mut self, _head: &Head) -> io::Result<()> {
        let headings: Vec<String> = COLUMNS.iter().map(|(_, h)| csv_field(h)).collect();
        write!(self.out, "{}\r\n", headings.join(","))
    }

    fn row(&mut self, cells: &[String]) -> io::Result<()> {
        let fields: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        write!(self.out, "{}\r\n", fields.join(","))
    }

    fn end(&mut self, head: &Head, _written: u64, integrity: &Integrity) -> io::Result<()> {
        write!(self.out, "# pgtrail report: {}\r\n", head.spec.kind.title())?;
        for (name, value) in head.parameters() {
            write!(self.out, "# {name}: {}\r\n", value.replace(['\r', '\n'], " "))?;
        }
        write!(self.out, "# events: {}\r\n", head.summary.rows)?;
        for gap in &head.summary.silences {
            write!(
                self.out,
                "# silence: instance {} had no event from {} to {} ({} s)\r\n",
                gap.instance, gap.from, gap.to, gap.seconds
            )?;
        }
        write!(self.out, "# integrity statement\r\n")?;
        for line in integrity.lines() {
            write!(self.out, "# {}\r\n", line.replace(['\r', '\n'], " "))?;
        }
        Ok(())
    }
}

struct Json<'a> {
    out: &'a mut dyn Write,
    rows: u64,
}

impl Sink for Json<'_> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        let s = head.summary;
        let parameters: serde_json::Map<String, serde_json::Value> =
            head.parameters().into_iter().map(|(k, v)| (k.replace(' ', "_"), v.into())).collect();
        let groups: serde_json::Map<String, serde_json::Value> = s
            .groups
            .iter()
            .map(|(title, top)| {
                let top: Vec<_> = top.iter().map(|(v, n)| json!({"value": v, "events": n})).collect();
                (title.replace(' ', "_"), top.into())
            })
            .collect();
        let series: Vec<_> = s
            .series
            .iter()
            .map(|(at, n)| json!({"from": at.to_rfc3339_opts(SecondsFormat::Secs, true), "events": n}))
            .collect();
        let silences: Vec<_> = s
            .silences
            .iter()
            .map(|g| json!({"instance": g.instance, "from": g.from, "to": g.to, "seconds": g.seconds}))
            .collect();
        let opening = json!({
            "report": head.spec.kind.title(),
            "parameters": parameters,
            "summary": {"events": s.rows, "people": s.people, "database_users": s.users, "sessions": s.sessions,
                        "top": groups, "bucket_seconds": s.bucket_secs, "series": series, "silences": silences},
        });
        // The document is written as it goes: everything but its closing brace, then the rows.
        let text = serde_json::to_string(&opening)?;
        write!(self.out, "{},\"rows\":[", &text[..text.len() - 1])
    }

    fn row(&mut self, cells: &[String]) -> io::Result<()> {
        // An object with the columns in the report's order.
        let mut row = String::with_capacity(512);
        row.push_str(if self.rows > 0 { ",\n{" } else { "\n{" });
        for (i, ((_, heading), cell)) in COLUMNS.iter().zip(cells).enumerate() {
            if i > 0 {
                row.push(',');
            }
            row.push_str(&serde_json::to_string(heading)?);
            row.push(':');
            row.push_str(&serde_json::to_string(cell)?);
        }
        row.push('}');
        self.rows += 1;
        self.out.write_all(row.as_bytes())
    }

    fn end(&mut self, _head: &Head, _written: u64, integrity: &Integrity) -> io::Result<()> {
        let closing = json!({"integrity": integrity, "integrity_statement": integrity.lines()});
        let text = serde_json::to_string(&closing)?;
        write!(self.out, "\n],{}\n", &text[1..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_open_an_element_in_the_html_report() {
        assert_eq!(escape("<script>x</script>&'\""), "&lt;script&gt;x&lt;/script&gt;&amp;&#39;&quot;");
    }

    #[test]
    fn csv_fields_with_separators_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\nnow"), "\"say \"\"hi\"\"\nnow\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
