//! From stack ids to frames: reads the kernel's stack map, repairs the user
//! stack's skipped leaf caller ([`crate::unwind`]) and symbolizes.
use std::{cell::RefCell, collections::HashMap, rc::Rc};

use crate::{
    event::{Event, Open, Stack, Task},
    symbolize::{Frame, Symbolizer},
    tracer::Tracer,
    unwind::{LeafUnwinder, insert_caller},
};

/// (pid, process start time, user stack id, recovered leaf caller): the
/// same stack id in a later process with the same pid is another stack.
pub type UserStackKey = (u32, u64, u32, Option<u64>);

/// Ids the resolver gives stacks that came through the ring: above any
/// stack map index, so both kinds share every cache.
const INLINE_ID_BASE: u32 = 1 << 31;

/// Inline stacks received but not yet claimed by their open; more means
/// their opens were lost (counted as ring losses already).
const PENDING_INLINE_MAX: usize = 4096;

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
    /// Inline stacks by cookie, until their open comes (right after).
    pending_inline: HashMap<u64, Vec<u64>>,
    /// Inline stacks by the id given to them.
    inline: HashMap<u32, Rc<[u64]>>,
    /// The same, by content: a stack that collides once collides again.
    inline_ids: HashMap<Rc<[u64]>, u32>,
    next_inline: u32,
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
            Event::Stack(stack) => {
                if self.pending_inline.len() >= PENDING_INLINE_MAX {
                    self.pending_inline.clear();
                }
                self.pending_inline
                    .insert(stack.cookie, std::mem::take(&mut stack.ips));
            }
            _ => {}
        }
    }

    /// Gives an inline user stack its id; fills `open.leaf_caller`.
    fn on_open(&mut self, tracer: &Tracer, open: &mut Open) {
        if open.user_stack == Stack::Inline {
            // An open whose cookie user space resolved later (the kprobe
            // set can see a socket before its cookie exists) had its stack
            // record sent under cookie 0.
            let ips = self
                .pending_inline
                .remove(&open.cookie)
                .or_else(|| self.pending_inline.remove(&0));
            open.user_stack = match ips {
                Some(ips) => Stack::Id(self.intern_inline(ips)),
                // Its record was lost with a full ring (counted there).
                None => Stack::Missing(libc::ENODATA),
            };
        }
        let Stack::Id(id) = open.user_stack else {
            return;
        };
        let pid = open.task.pid;
        let caller = if let Some(caller) = self.callers.get(&(pid, id)) {
            *caller
        } else {
            let ip = self.ips(tracer, id).and_then(|ips| ips.first().copied());
            let caller = ip.and_then(|ip| {
                self.unwinder
                    .caller(pid, ip, open.user_sp, &open.user_stack_top)
            });
            self.callers.insert((pid, id), caller);
            caller
        };
        open.leaf_caller = caller;
        if self.eager {
            self.user_frames(tracer, &open.task, open.user_stack, caller);
            self.kernel_frames(tracer, open.kernel_stack);
        }
    }

    /// Forgets what it cached to unwind an exited process. Its symbolized
    /// stacks stay while sockets it opened are open ([`Self::retain_user`]).
    fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.callers.retain(|(p, _), _| *p != pid);
        if !self.eager {
            self.user_frames
                .get_mut()
                .retain(|(p, _, _, _), _| *p != pid);
        }
    }

    /// Keeps only the symbolized user stacks `keep` says are still needed,
    /// and the inline stacks they come from.
    pub fn retain_user(&mut self, keep: impl Fn(&UserStackKey) -> bool) {
        self.user_frames.get_mut().retain(|key, _| keep(key));
        let frames = self.user_frames.get_mut();
        let needed: std::collections::HashSet<u32> =
            frames.keys().map(|(_, _, stack, _)| *stack).collect();
        self.inline.retain(|id, _| needed.contains(id));
        self.inline_ids.retain(|_, id| needed.contains(id));
    }

    /// Forgets everything cached under stack-map ids the kernel freed
    /// ([`Tracer::prune_stacks`]): a freed id comes back for another stack.
    pub fn forget_stacks(&mut self, freed: &std::collections::HashSet<u32>) {
        self.callers.retain(|(_, id), _| !freed.contains(id));
        self.user_frames
            .get_mut()
            .retain(|(_, _, id, _), _| !freed.contains(id));
        self.kernel_frames
            .get_mut()
            .retain(|id, _| !freed.contains(id));
    }

    /// Symbolized user stacks cached now.
    pub fn cached_user_stacks(&self) -> usize {
        self.user_frames.borrow().len()
    }

    /// An id for a stack that came through the ring; the same stack gets
    /// the same id while it is kept.
    fn intern_inline(&mut self, ips: Vec<u64>) -> u32 {
        let ips: Rc<[u64]> = ips.into();
        if let Some(&id) = self.inline_ids.get(&ips) {
            return id;
        }
        let id = INLINE_ID_BASE | self.next_inline;
        self.next_inline = (self.next_inline + 1) % INLINE_ID_BASE;
        self.inline.insert(id, Rc::clone(&ips));
        self.inline_ids.insert(ips, id);
        id
    }

    /// Instruction pointers of stack `id`, from the stack map or the ring.
    fn ips(&self, tracer: &Tracer, id: u32) -> Option<Vec<u64>> {
        match self.inline.get(&id) {
            Some(ips) => Some(ips.to_vec()),
            None if id < INLINE_ID_BASE => tracer.stack(id),
            None => None,
        }
    }

    /// Instruction pointers of a user stack, innermost first, repaired.
    pub fn user_ips(
        &self,
        tracer: &Tracer,
        stack: Stack,
        leaf_caller: Option<u64>,
    ) -> Option<Vec<u64>> {
        let Stack::Id(id) = stack else { return None };
        let mut ips = self.ips(tracer, id)?;
        insert_caller(&mut ips, leaf_caller);
        Some(ips)
    }

    /// The frames of a user stack `task` took (symbolized against that
    /// process, which must still run the first time).
    pub fn user_frames(
        &self,
        tracer: &Tracer,
        task: &Task,
        stack: Stack,
        leaf_caller: Option<u64>,
    ) -> Option<Rc<[Frame]>> {
        let Stack::Id(id) = stack else { return None };
        let pid = task.pid;
        let key = (pid, task.start_ns, id, leaf_caller);
        if let Some(frames) = self.user_frames.borrow().get(&key) {
            return Some(Rc::clone(frames));
        }
        let ips = self.user_ips(tracer, stack, leaf_caller)?;
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

/// Frames for the report, from the tracer's stack map through `stacks`.
pub struct Frames<'a> {
    pub tracer: &'a Tracer,
    pub stacks: &'a StackResolver,
}

impl crate::report::assemble::FrameSource for Frames<'_> {
    fn user(&self, socket: &crate::socket_table::Socket) -> Vec<Frame> {
        self.stacks
            .user_frames(
                self.tracer,
                &socket.opener,
                socket.user_stack,
                socket.leaf_caller,
            )
            .map(|frames| frames.to_vec())
            .unwrap_or_default()
    }

    fn kernel(&self, socket: &crate::socket_table::Socket) -> Vec<Frame> {
        self.stacks
            .kernel_frames(self.tracer, socket.kernel_stack)
            .map(|frames| frames.to_vec())
            .unwrap_or_default()
    }
}
