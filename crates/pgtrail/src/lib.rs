//! The pgtrail command-line tool's library: configuration, composition of the layers, and
//! the local PostgreSQL launcher behind `quickstart` (and the test harness).

pub mod alerts;
pub mod capture;
pub mod config;
pub mod ingest;
pub mod keys;
pub mod localpg;
pub mod metrics;
pub mod tail;
