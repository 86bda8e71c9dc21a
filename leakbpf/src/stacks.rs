//! From stack ids to frames: reads the kernel's stack map, repairs the user
//! stack's skipped leaf caller ([`crate::unwind`]) and symbolizes.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use rustc_hash::FxHashMap;

use crate::{
    event::{Event, Open, Stack, Task},
    symbolize::{Frame, Symbolizer},
    tracer::Tracer,
    unwind::{LeafUnwinder, caller_at, insert_caller},
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

/// The maps keyed by pid, stack id or cookie use FxHash: every open
/// looks up three of them, and SipHash was about 10% of the reader's CPU
/// under churn (perf, tenth session). Their keys are the kernel's numbers
/// and ids bounded by the stack maps, not free input: no flooding to fear.
/// Stacks keyed by content (`inline_ids`) keep SipHash.
#[derive(Default)]
pub struct StackResolver {
    /// Symbolize each new user stack as soon as its open is seen, while
    /// the process that took it still runs and still maps the same code:
    /// its sockets may outlive it (fork, SCM_RIGHTS) or it may exec.
    eager: bool,
    unwinder: LeafUnwinder,
    /// (pid, user stack id) -> the word above the stack pointer that holds
    /// the skipped caller's return address ([`LeafUnwinder::return_word`]):
    /// the same call path keeps it in the same word, so each is unwound
    /// once. The caller is read from each open's own words: two call sites
    /// in one function share the walk (and the stack id), not the caller.
    return_words: FxHashMap<(u32, u32), Option<usize>>,
    symbolizer: Symbolizer,
    /// Inline stacks by cookie, until their open comes (right after).
    pending_inline: FxHashMap<u64, Vec<u64>>,
    /// Inline stacks by the id given to them.
    inline: FxHashMap<u32, Arc<[u64]>>,
    /// The same, by content: a stack that collides once collides again.
    inline_ids: HashMap<Arc<[u64]>, u32>,
    next_inline: u32,
    /// Symbolized stacks: the same stack is resolved once. User stacks by
    /// (pid, stack id, leaf caller), kernel stacks by stack id.
    user_frames: Mutex<FxHashMap<UserStackKey, Slot>>,
    kernel_frames: Mutex<FxHashMap<u32, Arc<[Frame]>>>,
    /// Stack-map id -> the epoch an open last used it ([`Self::next_epoch`]):
    /// a stack that keeps opening sockets is kept, with its frames, even
    /// while none of its sockets is open, so churn does not re-symbolize.
    last_seen: FxHashMap<u32, u64>,
    epoch: u64,
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
    pub fn observe(&mut self, source: &dyn StackSource, event: &mut Event) {
        match event {
            Event::Open(open) => self.on_open(source, open),
            Event::Exit(exit) => self.forget(exit.task.pid),
            // Another image: what was learnt of the old one's code is stale
            // (its symbolized stacks stay: they name what ran then).
            Event::Exec(exec) => {
                self.unwinder.forget(exec.task.pid);
                self.return_words.retain(|(p, _), _| *p != exec.task.pid);
            }
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
    fn on_open(&mut self, source: &dyn StackSource, open: &mut Open) {
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
        // After an inline stack got its id: that id is in use too.
        for id in [
            open.user_stack.id(),
            open.kernel_stack.id(),
            open.request_stack.id(),
        ]
        .into_iter()
        .flatten()
        {
            self.last_seen.insert(id, self.epoch);
        }
        let Stack::Id(id) = open.user_stack else {
            return;
        };
        let pid = open.task.pid;
        let word = if let Some(word) = self.return_words.get(&(pid, id)) {
            *word
        } else {
            let ip = self.ips(source, id).and_then(|ips| ips.first().copied());
            let word = ip.and_then(|ip| self.unwinder.return_word(pid, ip));
            self.return_words.insert((pid, id), word);
            word
        };
        let caller = word.and_then(|word| caller_at(word, open.user_sp, &open.user_stack_top));
        open.leaf_caller = caller;
        if self.eager {
            let start_ns = open.task.start_ns;
            self.symbolize_early(source, pid, start_ns, open.user_stack, caller);
            self.kernel_frames(source, open.kernel_stack);
            // The request site, taken at the request by the same process.
            self.symbolize_early(source, pid, start_ns, open.request_stack, None);
        }
    }

    /// Hands a user stack of `pid` to the symbolizer thread, unless it is
    /// symbolized already: the reader goes on reading.
    fn symbolize_early(
        &mut self,
        source: &dyn StackSource,
        pid: u32,
        start_ns: u64,
        stack: Stack,
        caller: Option<u64>,
    ) {
        let Stack::Id(id) = stack else { return };
        let key = (pid, start_ns, id, caller);
        let frames = self
            .user_frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if frames.contains_key(&key) {
            return;
        }
        if let Some(ips) = self.user_ips(source, stack, caller) {
            let pending = self.symbolizer.submit_user(pid, &ips);
            self.user_frames
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, Slot::Pending(pending));
        }
    }

    /// Forgets what it cached to unwind an exited process. Its symbolized
    /// stacks stay while sockets it opened are open ([`Self::retain_user`]).
    fn forget(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.return_words.retain(|(p, _), _| *p != pid);
        if !self.eager {
            self.user_frames
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(p, _, _, _), _| *p != pid);
        }
    }

    /// Keeps only the symbolized user stacks `keep` says are still needed,
    /// and the inline stacks they come from.
    pub fn retain_user(&mut self, keep: impl Fn(&UserStackKey) -> bool) {
        self.user_frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| keep(key));
        let frames = self
            .user_frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let needed: std::collections::HashSet<u32> =
            frames.keys().map(|(_, _, stack, _)| *stack).collect();
        self.inline.retain(|id, _| needed.contains(id));
        self.inline_ids.retain(|_, id| needed.contains(id));
    }

    /// Starts a new epoch; forgets ids not used for `keep` epochs.
    pub fn next_epoch(&mut self, keep: u64) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.last_seen.retain(|_, seen| epoch - *seen <= keep);
    }

    /// Stack-map ids opens used within the kept epochs.
    pub fn recent_ids(&self) -> std::collections::HashSet<u32> {
        self.last_seen.keys().copied().collect()
    }

    /// Forgets everything cached under stack-map ids the kernel freed
    /// ([`Tracer::prune_stacks`]): a freed id comes back for another stack.
    pub fn forget_stacks(&mut self, freed: &std::collections::HashSet<u32>) {
        self.return_words.retain(|(_, id), _| !freed.contains(id));
        self.user_frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, _, id, _), _| !freed.contains(id));
        self.kernel_frames
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| !freed.contains(id));
    }

    /// See [`Symbolizer::release_caches`].
    pub fn release_symbol_caches(&self) {
        self.symbolizer.release_caches();
    }

    /// Symbol cache evictions so far (see [`Symbolizer::evictions`]).
    pub fn cache_evictions(&self) -> u64 {
        self.symbolizer.evictions()
    }

    /// Symbolized user stacks cached now.
    pub fn cached_user_stacks(&self) -> usize {
        self.user_frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// An id for a stack that came through the ring; the same stack gets
    /// the same id while it is kept.
    fn intern_inline(&mut self, ips: Vec<u64>) -> u32 {
        let ips: Arc<[u64]> = ips.into();
        if let Some(&id) = self.inline_ids.get(&ips) {
            return id;
        }
        let id = INLINE_ID_BASE | self.next_inline;
        self.next_inline = (self.next_inline + 1) % INLINE_ID_BASE;
        self.inline.insert(id, Arc::clone(&ips));
        self.inline_ids.insert(ips, id);
        id
    }

    /// Instruction pointers of stack `id`, from the stack map or the ring.
    fn ips(&self, source: &dyn StackSource, id: u32) -> Option<Vec<u64>> {
        match self.inline.get(&id) {
            Some(ips) => Some(ips.to_vec()),
            None if id < INLINE_ID_BASE => source.stack(id),
            None => None,
        }
    }

    /// Instruction pointers of a user stack, innermost first, repaired.
    pub fn user_ips(
        &self,
        source: &dyn StackSource,
        stack: Stack,
        leaf_caller: Option<u64>,
    ) -> Option<Vec<u64>> {
        let Stack::Id(id) = stack else { return None };
        let mut ips = self.ips(source, id)?;
        insert_caller(&mut ips, leaf_caller);
        Some(ips)
    }

    /// The frames of a user stack `task` took (symbolized against that
    /// process, which must still run the first time).
    pub fn user_frames(
        &self,
        source: &dyn StackSource,
        task: &Task,
        stack: Stack,
        leaf_caller: Option<u64>,
    ) -> Option<Arc<[Frame]>> {
        let Stack::Id(id) = stack else { return None };
        let pid = task.pid;
        let key = (pid, task.start_ns, id, leaf_caller);
        let mut cache = self
            .user_frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = cache.remove(&key) {
            let frames: Arc<[Frame]> = match slot {
                Slot::Ready(frames) => frames,
                Slot::Pending(pending) => pending.wait().into(),
            };
            cache.insert(key, Slot::Ready(Arc::clone(&frames)));
            return Some(frames);
        }
        drop(cache);
        let ips = self.user_ips(source, stack, leaf_caller)?;
        let frames: Arc<[Frame]> = self.symbolizer.user(pid, &ips).into();
        self.user_frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Slot::Ready(Arc::clone(&frames)));
        Some(frames)
    }

    pub fn kernel_frames(&self, source: &dyn StackSource, stack: Stack) -> Option<Arc<[Frame]>> {
        let Stack::Id(id) = stack else { return None };
        if let Some(frames) = self
            .kernel_frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Some(Arc::clone(frames));
        }
        let frames: Arc<[Frame]> = self.symbolizer.kernel(&source.stack(id)?).into();
        self.kernel_frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&frames));
        Some(frames)
    }
}

/// A symbolized user stack, or one the symbolizer thread is still naming.
enum Slot {
    Ready(Arc<[Frame]>),
    Pending(crate::symbolize::Pending),
}

/// Where recorded stacks are read: the tracer's stack map, or a test's.
pub trait StackSource {
    /// Instruction pointers of stack `id`, innermost first.
    fn stack(&self, id: u32) -> Option<Vec<u64>>;
}

impl StackSource for Tracer {
    fn stack(&self, id: u32) -> Option<Vec<u64>> {
        Tracer::stack(self, id)
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

    fn request(&self, socket: &crate::socket_table::Socket) -> Vec<Frame> {
        self.stacks
            .user_frames(self.tracer, &socket.opener, socket.request_stack, None)
            .map(|frames| frames.to_vec())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, Endpoints, TcpState};

    /// The stack pipeline can move to another thread (the agent's).
    #[test]
    fn the_resolver_is_send() {
        fn send<T: Send>() {}
        send::<StackResolver>();
    }

    /// A stack map of one stack: `ips`.
    struct OneStack(Vec<u64>);

    impl StackSource for OneStack {
        fn stack(&self, id: u32) -> Option<Vec<u64>> {
            (id == 7 && !self.0.is_empty()).then(|| self.0.clone())
        }
    }

    #[inline(never)]
    fn where_the_socket_was_opened() -> u64 {
        // The address of this very function, as a frame of its own.
        where_the_socket_was_opened as *const () as u64 + 1
    }

    fn open(task: Task, stack: Stack) -> Event {
        Event::Open(Box::new(Open {
            time_ns: 1,
            cookie: 42,
            task,
            endpoints: Endpoints::new(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                TcpState::SynSent,
            ),
            direction: Direction::Connect,
            fd: Some(3),
            user_stack: stack,
            kernel_stack: Stack::Missing(0),
            user_sp: 0,
            request_stack: Stack::NOT_PROBED,
            user_stack_top: [0; leakbpf_common::USER_STACK_TOP_WORDS],
            leaf_caller: None,
        }))
    }

    #[test]
    fn symbolizes_at_open_and_forgets_freed_ids() {
        let task = Task {
            pid: std::process::id(),
            tid: 0,
            cgroup_id: 0,
            comm: "test".into(),
            start_ns: 5,
        };
        let source = OneStack(vec![where_the_socket_was_opened()]);
        let mut resolver = StackResolver::eager();
        let mut event = open(task.clone(), Stack::Id(7));
        resolver.observe(&source, &mut event);
        assert_eq!(resolver.cached_user_stacks(), 1, "symbolized at open");
        // Later reads come from the cache, even with the map entry gone.
        let frames = resolver
            .user_frames(&OneStack(Vec::new()), &task, Stack::Id(7), None)
            .expect("cached frames");
        let symbol = frames[0].symbol.as_deref().unwrap_or_default();
        assert!(symbol.contains("where_the_socket_was_opened"), "{frames:?}");
        // The kernel freed id 7 (pruned): nothing cached under it survives.
        resolver.forget_stacks(&std::iter::once(7).collect());
        assert_eq!(resolver.cached_user_stacks(), 0);
        assert!(
            resolver
                .user_frames(&OneStack(Vec::new()), &task, Stack::Id(7), None)
                .is_none()
        );
    }
}
