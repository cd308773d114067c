//! Frame parsing and encoding, and delta serialisation.
//!
//!     cargo bench --bench protocol

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};

use chimed::chat::delta::Delta;
use chimed::protocol::{decode, encode_error, encode_success, ApiError};
use chimed::wire::line::LineReader;

fn post_frame() -> Vec<u8> {
    let content = "x".repeat(128);
    json!({"action": "POST_MESSAGE", "id": 42,
           "data": {"channel_id": "1838509846966273", "content": content, "client_msg_id": "p1-m17"}})
    .to_string()
    .into_bytes()
}

fn frames(c: &mut Criterion) {
    let frame = post_frame();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode POST_MESSAGE (128 B content)", |b| {
        b.iter(|| decode(black_box(&frame)))
    });
    let mut data = Map::new();
    data.insert("delta_id".into(), json!(123456));
    data.insert("message_id".into(), json!("1838509846969344"));
    data.insert("server_id".into(), json!("1838509846966272"));
    let id = Value::from(42);
    g.bench_function("encode success response", |b| {
        b.iter(|| encode_success(black_box("POST_MESSAGE"), Some(&id), black_box(&data)))
    });
    let err = ApiError::forbidden("not a member of this server");
    g.bench_function("encode error response", |b| {
        b.iter(|| encode_error(Some("POST_MESSAGE"), Some(&id), &err))
    });
    g.finish();

    let mut many = Vec::new();
    for _ in 0..100 {
        many.extend_from_slice(&frame);
        many.push(b'\n');
    }
    let mut g = c.benchmark_group("line framing");
    g.throughput(Throughput::Elements(100));
    g.bench_function("100 frames from one read", |b| {
        b.iter(|| {
            let mut r = LineReader::default();
            r.extend(black_box(&many));
            let mut n = 0;
            while let Ok(Some(f)) = r.next_frame(1 << 20) {
                n += f.len();
            }
            r.compact();
            n
        })
    });
    g.finish();
}

fn deltas(c: &mut Criterion) {
    let d = Delta {
        server_id: 1838509846966272,
        delta_id: 123456,
        kind: "message".into(),
        channel_id: Some(1838509846966273),
        message_id: Some(1838509846969344),
        user_id: 1838509846927360,
        content: Some("x".repeat(128)),
        attachments: None,
        created_at: 1_795_000_000_123,
    };
    let mut g = c.benchmark_group("delta");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serialise PUBLISH_DELTA frame", |b| {
        b.iter(|| black_box(&d).publish_frame())
    });
    g.finish();
}

criterion_group!(benches, frames, deltas);
criterion_main!(benches);
