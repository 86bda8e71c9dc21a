//! User-space pipeline: ring-buffer record bytes -> decode -> socket table,
//! the work the reader does per event. Records are what the lean kernel side
//! sends for one loopback connection: connect open, accept open, the
//! client's close, the server's reset CLOSE, the server's close (the mix
//! `leakbpf agent` counts over `connbench churn`: 2 opens, 2 closes and
//! 1.06 state changes per connection). 10,000 connections from one stack,
//! into a fresh table each pass (its growth included) and into one
//! long-lived table (the reader's steady state).
//! `cargo bench -p leakbpf --bench pipeline`; figures in BENCHMARKS.md.
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use leakbpf::{
    event::decode,
    socket_table::{Limits, SocketTable},
};
use leakbpf_common as common;

fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a #[repr(C)] plain-data value.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

fn header(kind: u32, time_ns: u64, cookie: u64) -> common::EventHeader {
    common::EventHeader {
        kind,
        cpu: 0,
        time_ns,
        cookie,
    }
}

fn endpoints(local_port: u16, remote_port: u16, state: u8) -> common::Endpoints {
    let mut local = [0u8; 16];
    local[..4].copy_from_slice(&[127, 0, 0, 1]);
    common::Endpoints {
        family: 2,
        local_port,
        remote_port,
        state,
        _pad: 0,
        local_addr: local,
        remote_addr: local,
    }
}

fn task(pid: u32) -> common::Task {
    let mut comm = [0u8; 16];
    comm[..9].copy_from_slice(b"connbench");
    common::Task {
        pid,
        tid: pid,
        cgroup_id: 1,
        comm,
        start_ns: 1,
    }
}

/// The records of `connections` churned connections.
fn records(connections: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for n in 0..connections {
        let (client, server) = (2 * n + 1, 2 * n + 2);
        let t = n * 1_000;
        let open = |cookie, direction, state| common::OpenEvent {
            header: header(common::kind::OPEN, t, cookie),
            task: task(100),
            endpoints: endpoints(40_000, 8080, state),
            direction,
            _pad: [0; 3],
            fd: 5,
            user_stack_id: 7,
            kernel_stack_id: -1,
            request_stack_id: common::go::NOT_PROBED,
            _pad2: 0,
            user_sp: 0x7ffd_0000,
            user_stack_top: [0; common::USER_STACK_TOP_WORDS],
        };
        let state = |cookie, state| common::StateEvent {
            header: header(common::kind::STATE, t + 1, cookie),
            endpoints: endpoints(40_000, 8080, state),
            old_state: 1,
            _pad: [0; 7],
        };
        let close = |cookie| common::CloseEvent {
            header: header(common::kind::CLOSE, t + 2, cookie),
            task: common::Task {
                pid: 100,
                tid: 100,
                ..common::Task::default()
            },
            family: 2,
            state: 7,
            _pad: [0; 5],
        };
        out.push(bytes_of(&open(client, common::direction::CONNECT, 2)));
        out.push(bytes_of(&open(server, common::direction::ACCEPT, 1)));
        out.push(bytes_of(&close(client)));
        out.push(bytes_of(&state(server, 7)));
        out.push(bytes_of(&close(server)));
    }
    out
}

fn pipeline(c: &mut Criterion) {
    let records = records(10_000);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for record in &records {
                black_box(decode(black_box(record)).ok());
            }
        });
    });
    group.bench_function("decode_and_table", |b| {
        b.iter(|| {
            let mut table = SocketTable::new(Limits {
                forget_closed: true,
                ..Limits::default()
            });
            for record in &records {
                if let Ok(event) = decode(record) {
                    black_box(table.apply(&event));
                }
            }
            table
        });
    });
    // The reader's real condition: one long-lived table, sockets coming and
    // going (the records' cookies are reused from one pass to the next,
    // each socket closed before its cookie opens again).
    let mut table = SocketTable::new(Limits {
        forget_closed: true,
        ..Limits::default()
    });
    group.bench_function("decode_and_long_lived_table", |b| {
        b.iter(|| {
            for record in &records {
                if let Ok(event) = decode(record) {
                    black_box(table.apply(&event));
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
