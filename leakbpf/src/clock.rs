//! Kernel event times are CLOCK_MONOTONIC nanoseconds; people want wall time.
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_ns: u64,
    wall: SystemTime,
}

impl Clock {
    /// Pairs the monotonic clock with the wall clock, now.
    pub fn now() -> Self {
        Clock {
            mono_ns: monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    /// Wall time of a kernel timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_monotonic_to_wall_both_ways() {
        let clock = Clock {
            mono_ns: 10_000,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        };
        assert_eq!(
            clock.wall(12_000),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(100_000_002_000)
        );
        assert_eq!(
            clock.wall(9_000),
            SystemTime::UNIX_EPOCH + Duration::from_nanos(99_999_999_000)
        );
    }
}
