//! One definition of "complete", shared by every command: what was lost
//! (in the kernel or while decoding), what a tracking limit refused, and
//! any gap a report found, each as a reason a person can read. A result is
//! complete only when there is no reason at all.
use serde::Serialize;

use crate::socket_table::TableStats;

/// Everything that was dropped, in the kernel or while decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    /// Events the ring buffer had no room for.
    pub ringbuf_full: u64,
    /// Open events whose user stack could not be recorded.
    pub user_stacks: u64,
    /// Open events whose kernel stack could not be recorded.
    pub kernel_stacks: u64,
    /// Accepts whose socket could not be read (not reported).
    pub accept_reads: u64,
    /// Records user space could not decode.
    pub undecodable: u64,
    /// Opens whose socket had no cookie yet and was gone before sock_diag
    /// could name it (see `tracer::resolve_cookies`); not reported.
    pub unresolved_cookies: u64,
}

impl LostCounts {
    /// Lost lifecycle events: what makes a socket count wrong.
    pub fn events(&self) -> u64 {
        self.ringbuf_full + self.accept_reads + self.undecodable + self.unresolved_cookies
    }

    /// Lost stacks: what makes an attribution to code incomplete.
    pub fn stacks(&self) -> u64 {
        self.user_stacks + self.kernel_stacks
    }
}

/// Why a result may be wrong; empty means complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completeness {
    reasons: Vec<String>,
}

impl Completeness {
    /// The losses of a tracing run and the limits its socket table hit.
    pub fn of_run(lost: &LostCounts, table: &TableStats) -> Completeness {
        let mut completeness = Completeness::default();
        if lost.events() > 0 {
            completeness.add(format!("{} events lost ({lost:?})", lost.events()));
        }
        if lost.stacks() > 0 {
            completeness.add(format!("{} stacks lost", lost.stacks()));
        }
        if table.dropped_full > 0 {
            completeness.add(format!(
                "{} sockets not tracked: the socket table was full",
                table.dropped_full
            ));
        }
        completeness
    }

    pub fn add(&mut self, reason: String) {
        self.reasons.push(reason);
    }

    pub fn is_complete(&self) -> bool {
        self.reasons.is_empty()
    }

    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    pub fn into_reasons(self) -> Vec<String> {
        self.reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lost_is_complete() {
        let completeness = Completeness::of_run(&LostCounts::default(), &TableStats::default());
        assert!(completeness.is_complete());
        assert!(completeness.reasons().is_empty());
    }

    #[test]
    fn every_kind_of_loss_is_a_reason() {
        let lost = LostCounts {
            ringbuf_full: 3,
            user_stacks: 1,
            undecodable: 2,
            ..LostCounts::default()
        };
        let table = TableStats {
            dropped_full: 4,
            ..TableStats::default()
        };
        let completeness = Completeness::of_run(&lost, &table);
        assert!(!completeness.is_complete());
        let reasons = completeness.reasons();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].starts_with("5 events lost"), "{reasons:?}");
        assert_eq!(reasons[1], "1 stacks lost");
        assert_eq!(
            reasons[2],
            "4 sockets not tracked: the socket table was full"
        );
    }
}
