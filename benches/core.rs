//! The protocol core's own cost per request, without sockets: a WRITE then
//! READ pair (the `pairs` workload), a transaction of 10 writes, and a
//! watched WRITE, each fed as wire bytes and drained as a frontend would.
//!
//! `cargo bench --bench core`. What this measures bounds how close the
//! daemon can get to the socket floor (benches/README.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rxenstored_core::{Config, ConnId, Core};
use wire::Op;

fn request(core: &mut Core, conn: ConnId, op: Op, tx: u32, payload: &[u8], buf: &mut Vec<u8>) -> usize {
    buf.clear();
    wire::encode(op, 1, tx, payload, buf);
    core.receive(conn, buf).expect("valid");
    let mut n = 0;
    let out = core.output(conn).expect("conn");
    while let Some(front) = out.front() {
        let len = front.len();
        n += len;
        out.advance(len);
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut core = Core::new(Config::default());
    let conn = core.connect_socket();
    let mut buf = Vec::new();
    // A tree of 100 domains with 100 keys, like a host's.
    for d in 0..100 {
        for k in 0..100 {
            request(&mut core, conn, Op::Write, 0, format!("/local/domain/{d}/key{k}\0value").as_bytes(), &mut buf);
        }
    }
    let _ = core.take_dirty();
    c.bench_function("core/write_read_pair", |b| {
        b.iter(|| {
            request(&mut core, conn, Op::Write, 0, b"/local/domain/7/key1\0new value", &mut buf);
            black_box(request(&mut core, conn, Op::Read, 0, b"/local/domain/7/key1\0", &mut buf));
            let _ = core.take_dirty();
        })
    });
    c.bench_function("core/transaction_10_writes", |b| {
        b.iter(|| {
            buf.clear();
            wire::encode(Op::TransactionStart, 1, 0, b"\0", &mut buf);
            core.receive(conn, &buf).expect("valid");
            let tx = {
                let out = core.output(conn).expect("conn");
                let front = out.front().expect("reply").to_vec();
                let n = front.len();
                out.advance(n);
                std::str::from_utf8(&front[16..front.len() - 1]).expect("id").parse::<u32>().expect("id")
            };
            for k in 0..10 {
                request(&mut core, conn, Op::Write, tx, format!("/local/domain/9/tx/k{k}\0v").as_bytes(), &mut buf);
            }
            request(&mut core, conn, Op::TransactionEnd, tx, b"T\0", &mut buf);
            let _ = core.take_dirty();
        })
    });
    let watcher = core.connect_socket();
    request(&mut core, watcher, Op::Watch, 0, b"/local/domain\0tok\0", &mut buf);
    c.bench_function("core/watched_write", |b| {
        b.iter(|| {
            request(&mut core, conn, Op::Write, 0, b"/local/domain/7/key2\0x", &mut buf);
            let out = core.output(watcher).expect("watcher");
            while let Some(front) = out.front() {
                let n = front.len();
                out.advance(n);
            }
            let _ = core.take_dirty();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
