//! The queries behind a report, over the archive's `events` table: the rows, the summary
//! (counts, the largest groups, activity over time) and the journal records the report's
//! window covers.

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use pgtrail_query::datafusion::arrow::array::{Array, RecordBatch};
use pgtrail_query::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pgtrail_query::datafusion::prelude::SessionContext;

use crate::{Kind, ReportError, Spec};

/// The columns of a report's rows: (SQL, heading).
pub(crate) const COLUMNS: &[(&str, &str)] = &[
    ("log_time", "time (UTC)"),
    ("journal_instance", "instance"),
    ("record_seq", "record"),
    ("event_index", "event"),
    ("COALESCE(identity_email, identity_name, identity_subject)", "person"),
    ("db_user_name", "database user"),
    ("database_name", "database"),
    ("remote_host", "client"),
    ("session_id", "session"),
    ("CASE WHEN type = 'record' THEN class ELSE upper(type) END", "class"),
    ("command", "command"),
    ("CASE WHEN array_length(objects) > 0 THEN array_to_string(objects, ', ') ELSE object_name END", "objects"),
    ("row_count", "rows"),
    (
        "CASE WHEN verdict = 'denied' THEN concat('denied by ', denied_by) \
         WHEN sql_state IS NOT NULL THEN concat('error ', sql_state) ELSE 'ok' END",
        "outcome",
    ),
    ("COALESCE(command_text, error_message)", "text"),
];

/// A report's summary.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub rows: u64,
    pub people: u64,
    pub users: u64,
    pub sessions: u64,
    /// The largest groups: (what is grouped, [(value, events)]).
    pub groups: Vec<(&'static str, Vec<(String, u64)>)>,
    /// Events per time bucket, from the first event's bucket to the last's.
    pub series: Vec<(DateTime<Utc>, u64)>,
    pub bucket_secs: i64,
    /// Coverage reports: the stretches with no event at all, longer than the gap asked for
    /// (the capture writes a heartbeat every few seconds, so silence means it was not
    /// running, or its events are missing).
    pub silences: Vec<Silence>,
}

/// A stretch of time in which an instance's journal has no event.
#[derive(Debug, Clone)]
pub(crate) struct Silence {
    pub instance: String,
    /// The last event before it and the first after it.
    pub from: String,
    pub to: String,
    pub seconds: i64,
}

/// The journal records a report's window covers in one instance.
#[derive(Debug, Clone)]
pub(crate) struct Covered {
    pub instance: String,
    pub first: u64,
    pub last: u64,
    pub events: u64,
}

/// A quoted SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The bucket of the activity chart: a round size giving at most about 120 bars.
fn bucket_secs(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    const NICE: [i64; 9] = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400];
    let wanted = (to - from).num_seconds().max(1) / 120 + 1;
    NICE.into_iter().find(|&n| n >= wanted).unwrap_or_else(|| (wanted + 86_399) / 86_400 * 86_400)
}

pub(crate) struct Selection {
    /// The report's time window (and the partitions it spans).
    window: String,
    /// The window and what the kind and the filters select.
    condition: String,
    kind: Kind,
    gap_secs: u64,
}

impl Selection {
    pub fn new(spec: &Spec) -> Selection {
        let window = format!(
            "date >= {} AND date <= {} AND log_time >= {} AND log_time < {}",
            literal(&spec.from.date_naive().to_string()),
            literal(&spec.to.date_naive().to_string()),
            literal(&spec.from.to_rfc3339()),
            literal(&spec.to.to_rfc3339()),
        );
        let mut condition = format!("{window} AND ({})", spec.kind.condition());
        if let Some(user) = &spec.user {
            condition.push_str(&format!(" AND db_user_name = {}", literal(user)));
        }
        if let Some(person) = &spec.person {
            let p = literal(person);
            condition
                .push_str(&format!(" AND (identity_name = {p} OR identity_email = {p} OR identity_subject = {p})"));
        }
        if let Some(object) = &spec.object {
            let o = literal(object);
            condition.push_str(&format!(" AND (object_name = {o} OR array_has(objects, {o}))"));
        }
        Selection { window, condition, kind: spec.kind, gap_secs: spec.gap_secs }
    }

    async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<String>>, ReportError> {
        let batches = ctx.sql(sql).await?.collect().await?;
        let mut rows = Vec::new();
        for batch in &batches {
            cells(batch, |row| rows.push(row.to_vec()))?;
        }
        Ok(rows)
    }

    pub async fn summary(&self, ctx: &SessionContext) -> Result<Summary, ReportError> {
        let c = &self.condition;
        let totals = Self::collect(
            ctx,
            &format!(
                "SELECT count(*), count(DISTINCT COALESCE(identity_email, identity_name, identity_subject)), \
                 count(DISTINCT db_user_name), count(DISTINCT session_id) FROM events WHERE {c}"
            ),
        )
        .await?;
        let number = |row: &[String], i: usize| row.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let mut summary = Summary::default();
        if let Some(row) = totals.first() {
            (summary.rows, summary.people, summary.users, summary.sessions) =
                (number(row, 0), number(row, 1), number(row, 2), number(row, 3));
        }
        let mut groups: Vec<(&'static str, &str)> = vec![
            ("person", "COALESCE(identity_email, identity_name, identity_subject)"),
            ("database user", "db_user_name"),
            ("command", "command"),
        ];
        match self.kind {
            Kind::ObjectAccess => groups.push(("object", "unnest(objects)")),
            Kind::FailedLogins => groups.push(("client", "remote_host")),
            Kind::Coverage => groups.insert(0, ("kind", "type")),
            _ => groups.push(("database", "database_name")),
        }
        for (title, expr) in groups {
            let rows = Self::collect(
                ctx,
                &format!(
                    "SELECT g, count(*) AS n FROM (SELECT {expr} AS g FROM events WHERE {c}) \
                     GROUP BY g ORDER BY n DESC, g LIMIT 10"
                ),
            )
            .await?;
            let top = rows.iter().map(|r| (r[0].clone(), number(r, 1))).collect();
            summary.groups.push((title, top));
        }
        if self.kind == Kind::Coverage {
            summary.silences = self.silences(ctx).await?;
        }
        // The chart spans the events found, not the whole window asked for.
        let span = Self::collect(
            ctx,
            &format!(
                "SELECT CAST(min(date_part('epoch', log_time)) AS BIGINT), \
                 CAST(max(date_part('epoch', log_time)) AS BIGINT) FROM events WHERE {c}"
            ),
        )
        .await?;
        let seconds = |i: usize| span.first().and_then(|r| r.get(i)).and_then(|s| s.parse::<i64>().ok());
        let (Some(first), Some(last)) = (seconds(0), seconds(1)) else {
            return Ok(summary);
        };
        summary.bucket_secs = bucket_secs(Utc.timestamp_opt(first, 0).unwrap(), Utc.timestamp_opt(last, 0).unwrap());
        let series = Self::collect(
            ctx,
            &format!(
                "SELECT CAST(date_part('epoch', date_bin(INTERVAL '{} seconds', log_time, \
                 TIMESTAMP '1970-01-01T00:00:00')) AS BIGINT) AS b, count(*) FROM events WHERE {c} GROUP BY b ORDER BY b",
                summary.bucket_secs
            ),
        )
        .await?;
        let counts: Vec<(i64, u64)> =
            series.iter().filter_map(|r| Some((r[0].parse::<i64>().ok()?, number(r, 1)))).collect();
        if let (Some(first), Some(last)) = (counts.first(), counts.last()) {
            // Seconds since the epoch.
            let step = summary.bucket_secs;
            let mut at = first.0;
            let mut counts = counts.iter().peekable();
            while at <= last.0 {
                let n = match counts.peek() {
                    Some((b, n)) if *b == at => {
                        counts.next();
                        *n
                    }
                    _ => 0,
                };
                summary.series.push((Utc.timestamp_opt(at, 0).unwrap(), n));
                at += step;
            }
        }
        Ok(summary)
    }

    /// Stretches longer than the gap with no event of any kind, per instance.
    async fn silences(&self, ctx: &SessionContext) -> Result<Vec<Silence>, ReportError> {
        let rows = Self::collect(
            ctx,
            &format!(
                "SELECT journal_instance, previous, log_time, \
                 CAST(date_part('epoch', log_time) - date_part('epoch', previous) AS BIGINT) AS seconds \
                 FROM (SELECT journal_instance, log_time, \
                       lag(log_time) OVER (PARTITION BY journal_instance ORDER BY log_time) AS previous \
                       FROM events WHERE {} AND record_seq > 0) \
                 WHERE previous IS NOT NULL AND log_time - previous > INTERVAL '{} seconds' \
                 ORDER BY journal_instance, log_time",
                self.window, self.gap_secs
            ),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Silence {
                instance: r[0].clone(),
                from: r[1].clone(),
                to: r[2].clone(),
                seconds: r[3].parse().unwrap_or(0),
            })
            .collect())
    }

    /// The journal records holding the window's events, per instance (the retention
    /// control events, of record 0, are not journal records).
    pub async fn covered(&self, ctx: &SessionContext) -> Result<Vec<Covered>, ReportError> {
        let rows = Self::collect(
            ctx,
            &format!(
                "SELECT journal_instance, min(record_seq), max(record_seq), count(*) FROM events \
                 WHERE {} AND record_seq > 0 GROUP BY journal_instance ORDER BY journal_instance",
                self.window
            ),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Covered {
                instance: r[0].clone(),
                first: r[1].parse().unwrap_or(0),
                last: r[2].parse().unwrap_or(0),
                events: r[3].parse().unwrap_or(0),
            })
            .collect())
    }

    /// Streams the rows, in time order, to `row` (at most `limit`); returns how many.
    pub async fn rows(
        &self,
        ctx: &SessionContext,
        limit: Option<usize>,
        row: &mut dyn FnMut(&[String]) -> std::io::Result<()>,
    ) -> Result<u64, ReportError> {
        let columns: Vec<String> = COLUMNS.iter().enumerate().map(|(i, (expr, _))| format!("{expr} AS c{i}")).collect();
        let mut sql = format!(
            "SELECT {} FROM events WHERE {} ORDER BY log_time, journal_instance, record_seq, event_index",
            columns.join(", "),
            self.condition
        );
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
        let mut written = 0u64;
        let mut failed = None;
        while let Some(batch) = stream.next().await {
            cells(&batch?, |cells| {
                if failed.is_none() {
                    match row(cells) {
                        Ok(()) => written += 1,
                        Err(e) => failed = Some(e),
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        Ok(written)
    }
}

/// Calls `each` with every row of `batch` as text (an empty string for null).
fn cells(batch: &RecordBatch, mut each: impl FnMut(&[String])) -> Result<(), ReportError> {
    let options = FormatOptions::default().with_display_error(true);
    let formatters: Vec<ArrayFormatter> =
        batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
    let mut row = vec![String::new(); formatters.len()];
    for i in 0..batch.num_rows() {
        for (cell, (formatter, column)) in row.iter_mut().zip(formatters.iter().zip(batch.columns())) {
            cell.clear();
            if column.is_valid(i) {
                use std::fmt::Write;
                let _ = write!(cell, "{}", formatter.value(i));
            }
        }
        each(&row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_in_a_filter_stays_inside_its_literal() {
        assert_eq!(literal("o'brien"), "'o''brien'");
    }

    #[test]
    fn the_chart_has_at_most_about_120_bars_of_a_round_size() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(bucket_secs(at("2026-12-01T00:00:00Z"), at("2026-12-01T01:00:00Z")), 60);
        assert_eq!(bucket_secs(at("2026-12-01T00:00:00Z"), at("2026-12-02T00:00:00Z")), 900);
        assert_eq!(bucket_secs(at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z")), 4 * 86_400);
    }
}
