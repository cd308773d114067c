//! Storage benchmark: committed message deltas per second for group-commit batch sizes
//! 1, 10, 100 and 1000, on SQLite and on MySQL/MariaDB.
//!
//! Each batch runs through the writer's own code (`workers::run_batch`): one transaction,
//! `POST_MESSAGE` through the chat rules, the batch's rows in multi-row INSERTs, COMMIT.
//!
//!     cargo bench --bench storage                 # both backends
//!     CHIMED_BENCH_MYSQL=mysql://root@127.0.0.1:3306 cargo bench --bench storage
//!
//! MySQL is skipped (with a note) when it cannot be reached.

use std::time::{Duration, Instant};

use chimed::chat::ops::{run_write, Op, Settings, WriterState};
use chimed::store::{self, Db};
use chimed::workers::run_batch;

fn settings() -> Settings {
    Settings {
        storage_timeout: Duration::from_secs(10),
        token_ttl_ms: 3_600_000,
        partition_size: 10_000,
        max_batch: 1000,
        files_dir: std::env::temp_dir().join("chimed-bench-files"),
    }
}

fn write(db: &mut dyn Db, w: &mut WriterState, op: Op) -> serde_json::Map<String, serde_json::Value> {
    let mut deltas = Vec::new();
    db.begin().expect("begin");
    let (data, _) =
        run_write(db, &settings(), w, op, &mut deltas).unwrap_or_else(|e| panic!("setup write failed: {e:?}"));
    db.commit().expect("commit");
    data.into_map()
}

/// Commits `batches` transactions of `size` posts; returns deltas per second.
fn run(url: &str, size: usize, batches: usize) -> f64 {
    store::migrate(url, Duration::from_secs(10)).expect("migrate");
    let mut db = store::open(url, Duration::from_secs(10)).expect("open");
    let mut w = WriterState::default();
    let user = write(
        db.as_mut(),
        &mut w,
        Op::CreateUser {
            username: format!("bench{}", std::process::id()),
            password_hash: "x".into(),
        },
    );
    let user: i64 = user["user_id"].as_str().and_then(|s| s.parse().ok()).expect("user id");
    let srv = write(
        db.as_mut(),
        &mut w,
        Op::CreateServer {
            user,
            name: "bench".into(),
            description: String::new(),
            is_public: false,
        },
    );
    let channel_id: i64 = srv["channel_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("channel id");
    let content = "x".repeat(128);
    let started = Instant::now();
    let mut committed = 0usize;
    for _ in 0..batches {
        let ops = (0..size)
            .map(|_| {
                let op = Op::PostMessage {
                    user,
                    channel_id,
                    content: content.clone(),
                    attachments: Vec::new(),
                    client_msg_id: None,
                };
                ((), op)
            })
            .collect();
        let staged =
            run_batch(db.as_mut(), &mut w, &settings(), ops).unwrap_or_else(|(_, e)| panic!("batch failed: {e}"));
        for (_, r) in staged {
            committed += r.expect("post").1.len();
        }
    }
    committed as f64 / started.elapsed().as_secs_f64()
}

fn batches_for(size: usize) -> usize {
    // About 20,000 posts, bounded to 20..=2000 commits: stable figures in bounded time.
    (20_000 / size).clamp(20, 2000)
}

fn main() {
    let mut rows = Vec::new();
    let dir = std::env::temp_dir().join(format!("chimed-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mysql_base = std::env::var("CHIMED_BENCH_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    for size in [1usize, 10, 100, 1000] {
        let batches = batches_for(size);
        let sqlite = format!("sqlite://{}/b{size}.db", dir.display());
        let s = run(&sqlite, size, batches);
        let db = format!("chimed_bench_{}_{size}", std::process::id());
        let url = format!("{mysql_base}/{db}");
        let m = if store::open(&format!("{mysql_base}/mysql"), Duration::from_secs(2)).is_ok() {
            let v = run(&url, size, batches);
            if let Ok(mut admin) = store::open(&format!("{mysql_base}/mysql"), Duration::from_secs(5)) {
                let _ = admin.execute(&format!("DROP DATABASE IF EXISTS {db}"), &[]);
            }
            Some(v)
        } else {
            None
        };
        eprintln!(
            "batch {size}: sqlite {s:.0}/s, mysql {}",
            m.map_or("skipped".into(), |v| format!("{v:.0}/s"))
        );
        rows.push((size, batches, s, m));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("| batch size | commits | SQLite deltas/s | MariaDB deltas/s |");
    println!("|---:|---:|---:|---:|");
    for (size, batches, s, m) in rows {
        println!(
            "| {size} | {batches} | {s:.0} | {} |",
            m.map_or("unreachable".into(), |v| format!("{v:.0}"))
        );
    }
}
