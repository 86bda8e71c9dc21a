//! From stack ids to frames: reads the kernel's stack map, repairs the user
//! stack's skipped leaf caller ([`crate::unwind`]) and symbolizes.
use std::collections::HashMap;

use crate::{
    event::{Open, Stack},
    symbolize::{Frame, Symbolizer},
    tracer::Tracer,
    unwind::{LeafUnwinder, insert_caller},
};

#[derive(Default)]
pub struct StackResolver {
    unwinder: LeafUnwinder,
    /// (pid, user stack id) -> recovered caller: the same call path gives
    /// the same answer, so each is unwound once.
    callers: HashMap<(u32, u32), Option<u64>>,
    symbolizer: Symbolizer,
}

impl StackResolver {
    /// Fills `open.leaf_caller`. Call it as the event arrives, while the
    /// process that opened the socket surely still runs.
    pub fn on_open(&mut self, tracer: &Tracer, open: &mut Open) {
        let Stack::Id(id) = open.user_stack else {
            return;
        };
        let pid = open.task.pid;
        let caller = match self.callers.get(&(pid, id)) {
            Some(caller) => *caller,
            None => {
                let ip = tracer.stack(id).and_then(|ips| ips.first().copied());
                let caller = ip.and_then(|ip| {
                    self.unwinder
                        .caller(pid, ip, open.user_sp, &open.user_stack_top)
                });
                self.callers.insert((pid, id), caller);
                caller
            }
        };
        open.leaf_caller = caller;
    }

    /// Forgets what it cached about an exited process.
    pub fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.callers.retain(|(p, _), _| *p != pid);
    }

    /// Instruction pointers of a user stack, innermost first, repaired.
    pub fn user_ips(tracer: &Tracer, stack: Stack, leaf_caller: Option<u64>) -> Option<Vec<u64>> {
        let Stack::Id(id) = stack else { return None };
        let mut ips = tracer.stack(id)?;
        insert_caller(&mut ips, leaf_caller);
        Some(ips)
    }

    pub fn user_frames(
        &self,
        tracer: &Tracer,
        pid: u32,
        stack: Stack,
        leaf_caller: Option<u64>,
    ) -> Option<Vec<Frame>> {
        Self::user_ips(tracer, stack, leaf_caller).map(|ips| self.symbolizer.user(pid, &ips))
    }

    pub fn kernel_frames(&self, tracer: &Tracer, stack: Stack) -> Option<Vec<Frame>> {
        let Stack::Id(id) = stack else { return None };
        tracer.stack(id).map(|ips| self.symbolizer.kernel(&ips))
    }
}
