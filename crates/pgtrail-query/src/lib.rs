//! Owns: `pgtrail query`: SQL (DataFusion) over an archive's Parquet files as one table
//! named `events`, with the Hive partitions `date` and `instance` as columns (filters on
//! them skip whole directories), and the output formats.
//! Must not: write to the archive or the journal.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns with a header, for people.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per row.
    Jsonl,
}

/// What can go wrong in a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Archive(#[from] pgtrail_archive::ArchiveError),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("writing the result: {0}")]
    Io(#[from] std::io::Error),
}

/// The scheme the archive's store is registered under inside DataFusion.
const ARCHIVE_URL: &str = "pgtrail-archive://archive/";

/// A session over the archive at `target` (a directory or `s3://BUCKET/PREFIX`, as for
/// `pgtrail archive`) with the table `events`.
pub async fn session(target: &str) -> Result<SessionContext, QueryError> {
    let store = pgtrail_archive::open_target(target)?;
    let ctx = SessionContext::new();
    let url = url::Url::parse(ARCHIVE_URL).expect("a valid URL");
    ctx.register_object_store(&url, store);
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".into(), DataType::Utf8), ("instance".into(), DataType::Utf8)]);
    let config = ListingTableConfig::new(ListingTableUrl::parse(ARCHIVE_URL)?)
        .with_listing_options(options)
        .with_schema(pgtrail_archive::schema());
    ctx.register_table("events", Arc::new(ListingTable::try_new(config)?))?;
    Ok(ctx)
}

/// Runs `sql` over the archive at `target` and writes the result to `out`; returns the
/// number of rows.
pub async fn run(target: &str, sql: &str, format: Format, out: &mut dyn Write) -> Result<usize, QueryError> {
    let ctx = session(target).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    write(&batches, format, out)?;
    Ok(batches.iter().map(RecordBatch::num_rows).sum())
}

/// Writes `batches` in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> Result<(), QueryError> {
    match format {
        Format::Table => writeln!(out, "{}", datafusion::arrow::util::pretty::pretty_format_batches(batches)?)?,
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Jsonl => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
            writer.finish()?;
        }
    }
    Ok(())
}

/// The DataFusion this crate was built with, for crates that query the archive too.
pub use datafusion;
