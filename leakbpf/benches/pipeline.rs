//! User-space pipeline: ring-buffer record bytes -> decode -> socket table,
//! the work the reader does per event, in the reader's shape: each wakeup
//! decodes what the ring holds into a batch (`Tracer::read`), then applies
//! the batch to the table (the agent's and `trace`'s loops). A batch is what
//! the kernel side lets accumulate before it wakes the reader (a quarter of
//! the default ring, each record behind its 8-byte ring header). Records are
//! what
//! the lean kernel side sends for one loopback connection: connect open,
//! accept open, the client's close, the server's reset CLOSE, the server's
//! close (the mix `leakbpf agent` counts over `connbench churn`: 2 opens,
//! 2 closes and 1.06 state changes per connection). 10,000 connections from
//! one stack, into a fresh table each pass (its growth included) and into
//! one long-lived table (the reader's steady state).
//! Time is the thread's CPU time, not the wall clock: on a VM the host
//! takes the vCPU away now and then (steal), which the guest's wall clock
//! counts and its scheduler does not (paravirtual time accounting).
//! `cargo bench -p leakbpf --bench pipeline`; figures in BENCHMARKS.md.
use std::{hint::black_box, time::Duration};

use criterion::{
    Criterion, Throughput, criterion_group, criterion_main,
    measurement::{Measurement, ValueFormatter, WallTime},
};
use leakbpf::{
    event::{Event, decode},
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

/// `records` cut where the reader would be woken.
fn wakeups(records: &[Vec<u8>]) -> Vec<&[Vec<u8>]> {
    let budget = common::DEFAULT_RING_BYTES as usize / 4;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (n, record) in records.iter().enumerate() {
        let size = 8 + record.len().next_multiple_of(8);
        if bytes + size > budget {
            out.push(&records[start..n]);
            (start, bytes) = (n, 0);
        }
        bytes += size;
    }
    out.push(&records[start..]);
    out
}

/// One pass of the reader: decode a wakeup's records, apply them, next.
fn read(wakeups: &[&[Vec<u8>]], batch: &mut Vec<Event>, table: &mut SocketTable) {
    for records in wakeups {
        for record in *records {
            if let Ok(event) = decode(record) {
                batch.push(event);
            }
        }
        for event in batch.drain(..) {
            black_box(table.apply(&event));
        }
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpu;

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Durations print as the wall clock's do.
static DURATIONS: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        DURATIONS.formatter()
    }
}

fn pipeline(c: &mut Criterion<ThreadCpu>) {
    let records = records(10_000);
    let wakeups = wakeups(&records);
    let mut batch = Vec::new();
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
            read(&wakeups, &mut batch, &mut table);
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
        b.iter(|| read(&wakeups, &mut batch, &mut table));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = pipeline
}
criterion_main!(benches);
