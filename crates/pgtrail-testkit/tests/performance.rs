//! Issue 15 (performance), the parts that are behaviour rather than speed: what sync
//! delivery costs in fsyncs. Speed itself is measured by the scripts in bench/, never in
//! timed tests.

use std::sync::atomic::Ordering;

use pgtrail_proxy::Delivery;
use pgtrail_testkit::*;

/// Issue 15.1: `Recorder::record_durable` queued its event only when its future was first
/// polled, and the relay awaited a batch's futures one after another, so a multi-statement
/// query in sync mode was made durable one statement, and one fsync, at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_1_a_multi_statement_query_in_sync_mode_took_one_fsync_per_statement() {
    let pg = start_pg(HostAuth::Trust);
    pg.psql("CREATE TABLE t (i int)").expect("setup");
    let capture = TestCapture::start_with(&pg, |c| {
        c.proxy.delivery = Delivery::Sync;
        // Nothing else writes meanwhile: every fsync counted is the statements'.
        c.writer.recorder.heartbeat = None;
    })
    .await;
    let url = capture.url("postgres", "", "postgres");
    let warm = psql(&pg, &url, &["-c", "SELECT 1"]);
    assert_ok(&warm);
    let stats = capture.recorder_stats();
    let before = stats.fsyncs.load(Ordering::Relaxed);
    let query: String = (0..50).map(|i| format!("INSERT INTO t VALUES ({i});")).collect();
    assert_ok(&psql(&pg, &url, &["-c", &query]));
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed) - before;
    let events = capture.stop().await;
    let inserts = events.iter().filter(|e| e.command == "INSERT").count();
    assert_eq!(inserts, 50, "every statement has its event");
    // CONNECT, the 50 statements and DISCONNECT: a handful of fsyncs, not 52.
    assert!(fsyncs <= 8, "{fsyncs} fsyncs for a session of 50 statements");
}
