//! From stack ids to frames: reads the kernel's stack map, repairs the user
//! stack's skipped leaf caller ([`crate::unwind`]) and symbolizes.
use std::{cell::RefCell, collections::HashMap, rc::Rc};

use crate::{
    event::{Event, Open, Stack},
    symbolize::{Frame, Symbolizer},
    tracer::Tracer,
    unwind::{LeafUnwinder, insert_caller},
};

/// (pid, user stack id, recovered leaf caller).
pub type UserStackKey = (u32, u32, Option<u64>);

#[derive(Default)]
pub struct StackResolver {
    /// Symbolize each new user stack as soon as its open is seen, while
    /// the process that took it still runs and still maps the same code:
    /// its sockets may outlive it (fork, SCM_RIGHTS) or it may exec.
    eager: bool,
    unwinder: LeafUnwinder,
    /// (pid, user stack id) -> recovered caller: the same call path gives
    /// the same answer, so each is unwound once.
    callers: HashMap<(u32, u32), Option<u64>>,
    symbolizer: Symbolizer,
    /// Symbolized stacks: the same stack is resolved once. User stacks by
    /// (pid, stack id, leaf caller), kernel stacks by stack id.
    user_frames: RefCell<HashMap<UserStackKey, Rc<[Frame]>>>,
    kernel_frames: RefCell<HashMap<u32, Rc<[Frame]>>>,
}

impl StackResolver {
    /// A resolver that symbolizes at open time (see `eager`).
    pub fn eager() -> StackResolver {
        StackResolver {
            eager: true,
            ..StackResolver::default()
        }
    }

    /// Sees every event before the socket table does: an open gets its
    /// skipped caller recovered (while its process surely still runs), a
    /// process end drops what was cached about that pid.
    pub fn observe(&mut self, tracer: &Tracer, event: &mut Event) {
        match event {
            Event::Open(open) => self.on_open(tracer, open),
            Event::Exit(exit) => self.forget(exit.task.pid),
            _ => {}
        }
    }

    /// Fills `open.leaf_caller`.
    fn on_open(&mut self, tracer: &Tracer, open: &mut Open) {
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
        if self.eager {
            self.user_frames(tracer, pid, open.user_stack, caller);
            self.kernel_frames(tracer, open.kernel_stack);
        }
    }

    /// Forgets what it cached to unwind an exited process. Its symbolized
    /// stacks stay while sockets it opened are open ([`Self::retain_user`]).
    fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.callers.retain(|(p, _), _| *p != pid);
        if !self.eager {
            self.user_frames.get_mut().retain(|(p, _, _), _| *p != pid);
        }
    }

    /// Keeps only the symbolized user stacks `keep` says are still needed.
    pub fn retain_user(&mut self, keep: impl Fn(&UserStackKey) -> bool) {
        self.user_frames.get_mut().retain(|key, _| keep(key));
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
    ) -> Option<Rc<[Frame]>> {
        let Stack::Id(id) = stack else { return None };
        let key = (pid, id, leaf_caller);
        if let Some(frames) = self.user_frames.borrow().get(&key) {
            return Some(Rc::clone(frames));
        }
        let ips = Self::user_ips(tracer, stack, leaf_caller)?;
        let frames: Rc<[Frame]> = self.symbolizer.user(pid, &ips).into();
        self.user_frames
            .borrow_mut()
            .insert(key, Rc::clone(&frames));
        Some(frames)
    }

    pub fn kernel_frames(&self, tracer: &Tracer, stack: Stack) -> Option<Rc<[Frame]>> {
        let Stack::Id(id) = stack else { return None };
        if let Some(frames) = self.kernel_frames.borrow().get(&id) {
            return Some(Rc::clone(frames));
        }
        let frames: Rc<[Frame]> = self.symbolizer.kernel(&tracer.stack(id)?).into();
        self.kernel_frames
            .borrow_mut()
            .insert(id, Rc::clone(&frames));
        Some(frames)
    }
}
