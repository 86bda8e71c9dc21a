//! The socket table: a pure state machine over lifecycle events. It knows
//! which process opened each socket, since when, in which state, and which
//! stack opened it. No aya types and no system clock: the events carry their
//! own (kernel monotonic) time, so it is unit-tested without root.
//!
//! Ownership follows the kernel's model: a socket lives until its file's
//! last reference is released (`Close`) or the kernel frees it (`Destroy`),
//! never because the process that opened it exited: fork, `dup` and
//! SCM_RIGHTS hand sockets to other processes. The table therefore keeps
//! only the *opener* (where the leak was born); who holds a socket *now*
//! comes from the fd tables at report time ([`crate::snapshot`]).

/// The table's maps hash small integer keys (kernel-made cookies, pids):
/// FxHash, not SipHash. Nothing here is keyed by input an attacker picks.
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

use crate::event::{
    Close, Destroy, Direction, Endpoints, Event, Exit, Open, Stack, StateChange, Task, TcpState,
};

/// What the table knows of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub cookie: u64,
    /// The process that connected or accepted it (for pre-existing sockets,
    /// the first holder found at start-up). It may have exited since: the
    /// socket then lives on in whoever inherited or received it.
    pub opener: Task,
    pub direction: Direction,
    pub opened_ns: u64,
    pub endpoints: Endpoints,
    /// The opener's fd, where the hook knows it.
    pub fd: Option<i32>,
    pub user_stack: Stack,
    /// The caller frame-pointer unwinding skipped (see [`crate::unwind`]).
    pub leaf_caller: Option<u64>,
    pub kernel_stack: Stack,
    /// A Go connect's request site ([`Open::request_stack`]).
    pub request_stack: Stack,
    pub closed: Option<Closed>,
}

impl Socket {
    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }
}

/// An origin some tracked socket has ([`SocketTable::origins_in_use`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginInUse {
    /// (pid, start time) of the opener.
    pub opener: (u32, u64),
    pub user_stack: Stack,
    pub leaf_caller: Option<u64>,
    pub kernel_stack: Stack,
    pub request_stack: Stack,
}

/// The release of a socket's last file reference (close(), exit, last fd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    pub time_ns: u64,
    /// The releasing process (the opener, or one it handed the socket to).
    pub by_pid: u32,
    pub state: TcpState,
}

/// Sockets one process opened the same way from the same code: the unit
/// of the per-stack open/close counts (`growing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The opener: its pid and start time (a reused pid is another process).
    pub pid: u32,
    pub start_ns: u64,
    pub direction: Direction,
    pub user_stack: Option<u32>,
    pub leaf_caller: Option<u64>,
    /// Two request sites that dialed from the same Transport code are two
    /// groups: each is a line to fix.
    pub request_stack: Option<u32>,
}

impl GroupKey {
    /// The one place the key is made: from a socket's view and from an
    /// interned origin alike.
    fn new(
        opener: (u32, u64),
        direction: Direction,
        user_stack: Stack,
        leaf_caller: Option<u64>,
        request_stack: Stack,
    ) -> GroupKey {
        GroupKey {
            pid: opener.0,
            start_ns: opener.1,
            direction,
            user_stack: user_stack.id(),
            leaf_caller,
            request_stack: request_stack.id(),
        }
    }
}

impl Socket {
    pub fn group_key(&self) -> GroupKey {
        GroupKey::new(
            (self.opener.pid, self.opener.start_ns),
            self.direction,
            self.user_stack,
            self.leaf_caller,
            self.request_stack,
        )
    }
}

/// How many sockets one group opened and closed while tracing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    pub opened: u64,
    pub closed: u64,
}

/// What applying one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A new socket is tracked (or a tracked one connected again).
    Opened,
    StateChanged {
        old: TcpState,
    },
    /// Its last file reference was released (the socket's `opened_ns`
    /// gives its lifetime while the table remembers it). No payload wider
    /// than a byte: the result then comes back in a register, where a
    /// 16-byte one went through memory on every event.
    Closed,
    /// The kernel freed a tracked socket; it is forgotten.
    Destroyed,
    /// The event is about a socket the table does not track (a listener,
    /// one opened before tracing, one dropped for lack of room).
    Untracked,
    /// Not about a socket's life (an inline stack record).
    Ignored,
    /// The table was full: the socket is not tracked, results are incomplete.
    DroppedFull,
    /// A process exited. Its sockets are untouched: whoever inherited or
    /// received them still holds them, and a lost close shows up as a
    /// socket no fd table holds at report time.
    Exited,
}

/// Bounds on memory; anything dropped is counted in [`TableStats`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sockets tracked at once (open or closed-but-not-destroyed).
    pub max_sockets: usize,
    /// How long a closed socket is remembered while waiting for its destroy
    /// event (it may linger in FIN_WAIT/LAST_ACK, or its destroy was lost).
    pub closed_retention_ns: u64,
    /// Forget a socket at its close (the reports, whose tracer sends no
    /// destroys): nothing reports a released socket.
    pub forget_closed: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sockets: 1 << 20,
            closed_retention_ns: 120 * 1_000_000_000,
            forget_closed: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub opened: u64,
    pub closed: u64,
    pub destroyed: u64,
    pub untracked_events: u64,
    /// Opens not tracked because `max_sockets` was reached.
    pub dropped_full: u64,
    pub exits: u64,
    pub preexisting: u64,
    /// Open sockets forgotten because the kernel's socket tables no longer
    /// had them (their close was lost).
    pub reconciled: u64,
}

/// What many sockets share: who opened them, how, and from which code.
/// Interned once per distinct origin ([`Origins`]), so a socket costs a
/// 4-byte index instead of ~100 bytes of opener and stacks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    /// The opener with `tid` 0 (each socket keeps its own thread).
    opener: TaskKey,
    direction: Direction,
    user_stack: Stack,
    leaf_caller: Option<u64>,
    kernel_stack: Stack,
    request_stack: Stack,
}

/// [`Task`] as a hash key (its `comm` is inline and hashable).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TaskKey {
    pid: u32,
    cgroup_id: u64,
    comm: crate::event::Comm,
    start_ns: u64,
}

impl TaskKey {
    fn of(task: &Task) -> TaskKey {
        TaskKey {
            pid: task.pid,
            cgroup_id: task.cgroup_id,
            comm: task.comm,
            start_ns: task.start_ns,
        }
    }

    fn task(&self, tid: u32) -> Task {
        Task {
            pid: self.pid,
            tid,
            cgroup_id: self.cgroup_id,
            comm: self.comm,
            start_ns: self.start_ns,
        }
    }
}

/// The reference count of a freed [`Origins`] record.
const FREED: u32 = u32::MAX;

/// Interned [`Origin`]s, reference-counted by the sockets using them. One
/// that no socket uses any more is freed at the next sweep, not at once: a
/// churn from the same code would otherwise intern and free it again with
/// every connection.
#[derive(Debug, Default)]
struct Origins {
    /// Each origin, its reference count, and its group in [`Groups`] as
    /// last seen (checked before use: groups come and go).
    records: Vec<(Origin, u32, GroupRef)>,
    index: FastMap<Origin, u32>,
    free: Vec<u32>,
    /// Origins whose count reached 0 since the last sweep.
    unused: Vec<u32>,
    /// The origin interned last, per direction.
    last: [Option<u32>; 3],
}

impl Origin {
    fn of(open: &Open) -> Origin {
        Origin {
            opener: TaskKey::of(&open.task),
            direction: open.direction,
            user_stack: open.user_stack,
            leaf_caller: open.leaf_caller,
            kernel_stack: open.kernel_stack,
            request_stack: open.request_stack,
        }
    }

    fn group_key(&self) -> GroupKey {
        GroupKey::new(
            (self.opener.pid, self.opener.start_ns),
            self.direction,
            self.user_stack,
            self.leaf_caller,
            self.request_stack,
        )
    }

    /// Equal to `Origin::of(open)`, without building it.
    fn matches(&self, open: &Open) -> bool {
        let (o, t) = (&self.opener, &open.task);
        o.pid == t.pid
            && o.start_ns == t.start_ns
            && self.user_stack == open.user_stack
            && self.direction == open.direction
            && self.leaf_caller == open.leaf_caller
            && self.kernel_stack == open.kernel_stack
            && self.request_stack == open.request_stack
            && o.cgroup_id == t.cgroup_id
            && o.comm == t.comm
    }
}

impl Origins {
    /// The origin of `open`, interned. Sockets come in runs from the same
    /// code, connects and accepts interleaved: the last origin of each
    /// direction is tried before hashing.
    fn intern_open(&mut self, open: &Open) -> u32 {
        let recent = match open.direction {
            Direction::Connect => 0,
            Direction::Accept => 1,
            Direction::Preexisting => 2,
        };
        if let Some(id) = self.last[recent]
            && let Some((origin, refs, _)) = self.records.get_mut(id as usize)
            && *refs != FREED
            && origin.matches(open)
        {
            *refs += 1;
            return id;
        }
        let id = self.intern(Origin::of(open));
        self.last[recent] = Some(id);
        id
    }

    fn intern(&mut self, origin: Origin) -> u32 {
        if let Some(&id) = self.index.get(&origin) {
            self.records[id as usize].1 += 1;
            return id;
        }
        let id = if let Some(id) = self.free.pop() {
            self.records[id as usize] = (origin.clone(), 1, NO_GROUP);
            id
        } else {
            self.records.push((origin.clone(), 1, NO_GROUP));
            u32::try_from(self.records.len() - 1).unwrap_or(u32::MAX)
        };
        self.index.insert(origin, id);
        id
    }

    fn release(&mut self, id: u32) {
        let refs = &mut self.records[id as usize].1;
        *refs -= 1;
        if *refs == 0 {
            self.unused.push(id);
        }
    }

    /// Frees the origins still unused.
    fn sweep(&mut self) {
        for id in std::mem::take(&mut self.unused) {
            let (origin, refs, _) = &self.records[id as usize];
            // Used again since, or already freed (listed twice).
            if *refs == 0 {
                self.index.remove(origin);
                self.records[id as usize].1 = FREED;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> &Origin {
        &self.records[id as usize].0
    }

    /// The group of origin `id` in `groups`, created if missing; cached in
    /// the origin so the socket churn from one origin hashes no group key.
    fn group(&mut self, id: u32, groups: &mut Groups) -> u32 {
        if let Some(group) = self.existing_group(id, groups) {
            return group;
        }
        let (origin, _, cached) = &mut self.records[id as usize];
        *cached = groups.insert(origin.group_key());
        cached.id
    }

    /// Like [`Origins::group`], but `None` where the group was forgotten.
    /// The cached reference is checked by its generation, not by building
    /// and comparing the 40-byte key.
    fn existing_group(&mut self, id: u32, groups: &Groups) -> Option<u32> {
        let (origin, _, cached) = &mut self.records[id as usize];
        if !groups.holds(*cached) {
            *cached = groups.find(&origin.group_key())?;
        }
        Some(cached.id)
    }
}

/// A group's place in [`Groups`] and the generation it was made in: a
/// place freed and reused gets a new generation, so a stale reference
/// is told apart without comparing keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupRef {
    id: u32,
    generation: u32,
}

/// No group cached.
const NO_GROUP: GroupRef = GroupRef {
    id: u32::MAX,
    generation: 0,
};

/// Per-group open/close counts in an arena: an origin keeps the id of its
/// group, so counting an open or a close is an index, not a hash of the
/// 40-byte key.
#[derive(Debug, Default)]
struct Groups {
    /// Each group (`None` once forgotten) and the generation of its place.
    records: Vec<(Option<(GroupKey, GroupCounts)>, u32)>,
    index: FastMap<GroupKey, u32>,
    free: Vec<u32>,
    /// The generation the next group is made in (0 is [`NO_GROUP`]'s).
    generation: u32,
}

impl Groups {
    /// Whether `group` still names the group it was made for.
    fn holds(&self, group: GroupRef) -> bool {
        matches!(self.records.get(group.id as usize), Some((Some(_), generation)) if *generation == group.generation)
    }

    fn find(&self, key: &GroupKey) -> Option<GroupRef> {
        let id = *self.index.get(key)?;
        Some(GroupRef {
            id,
            generation: self.records[id as usize].1,
        })
    }

    /// A new group, counts 0 (`key` must not be in it yet).
    fn insert(&mut self, key: GroupKey) -> GroupRef {
        self.generation = self.generation.wrapping_add(1).max(1);
        let record = (Some((key, GroupCounts::default())), self.generation);
        let id = if let Some(id) = self.free.pop() {
            self.records[id as usize] = record;
            id
        } else {
            self.records.push(record);
            u32::try_from(self.records.len() - 1).unwrap_or(u32::MAX)
        };
        self.index.insert(key, id);
        GroupRef {
            id,
            generation: self.generation,
        }
    }

    fn counts_mut(&mut self, id: u32) -> &mut GroupCounts {
        match &mut self.records[id as usize].0 {
            Some((_, counts)) => counts,
            None => unreachable!("group {id} was checked just before"),
        }
    }

    fn get(&self, key: &GroupKey) -> Option<GroupCounts> {
        let id = *self.index.get(key)?;
        self.records[id as usize].0.map(|(_, counts)| counts)
    }

    fn retain(&mut self, keep: impl Fn(&GroupKey) -> bool) {
        let records = &mut self.records;
        let free = &mut self.free;
        self.index.retain(|key, id| {
            let kept = keep(key);
            if !kept {
                records[*id as usize].0 = None;
                free.push(*id);
            }
            kept
        });
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// One tracked socket as stored: 72 bytes (a unit test holds it there).
/// Whether it was released is not stored: its [`Closed`] in
/// `SocketTable::closed` says so, and a flag here would take the slot to
/// 80 bytes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The key: [`CookieIndex`] holds slot numbers and compares this.
    cookie: u64,
    opened_ns: u64,
    /// The best-known tuple and the current state.
    endpoints: Endpoints,
    /// Index into [`Origins`].
    origin: u32,
    /// The opening thread.
    tid: u32,
    /// The opener's fd, or -1.
    fd: i32,
}

impl Slot {
    fn new(
        cookie: u64,
        origin: u32,
        tid: u32,
        fd: Option<i32>,
        time_ns: u64,
        endpoints: &Endpoints,
    ) -> Slot {
        Slot {
            cookie,
            opened_ns: time_ns,
            endpoints: *endpoints,
            origin,
            tid,
            fd: fd.unwrap_or(-1),
        }
    }
}

/// Slots in fixed-size chunks: growing never copies them, and at most one
/// chunk is slack (a `Vec` that doubles can leave half of itself unused).
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
    free: Vec<u32>,
}

const SLOT_CHUNK: usize = 4096;

impl Slots {
    fn insert(&mut self, slot: Slot) -> u32 {
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = slot;
            return id;
        }
        if self.len.is_multiple_of(SLOT_CHUNK) {
            self.chunks.push(Vec::with_capacity(SLOT_CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(slot);
        }
        self.len += 1;
        u32::try_from(self.len - 1).unwrap_or(u32::MAX)
    }

    fn remove(&mut self, id: u32) {
        self.free.push(id);
    }

    fn get(&self, id: u32) -> &Slot {
        let id = id as usize;
        &self.chunks[id / SLOT_CHUNK][id % SLOT_CHUNK]
    }

    fn get_mut(&mut self, id: u32) -> &mut Slot {
        let id = id as usize;
        &mut self.chunks[id / SLOT_CHUNK][id % SLOT_CHUNK]
    }
}

/// Cookie -> slot number, 4 bytes (and a control byte) a bucket: the
/// cookie is compared in the slot the number names. A `HashMap<u64, u32>`
/// takes 16 bytes a bucket, 34 MiB at a million sockets against 10 here.
#[derive(Debug, Default)]
struct CookieIndex {
    ids: hashbrown::HashTable<u32>,
}

/// Open sockets per opener. The opener whose count changed last keeps its
/// change aside (`recent`) until another opener's comes: sockets come in
/// runs from one process, whose key would otherwise be hashed at every
/// open and every close.
#[derive(Debug, Default)]
struct OpenCounts {
    by_opener: FastMap<(u32, u64), u32>,
    recent: Option<((u32, u64), i64)>,
}

impl OpenCounts {
    /// One more (`1`) or one fewer (`-1`) open socket of `opener`.
    fn add(&mut self, opener: (u32, u64), change: i64) {
        match &mut self.recent {
            Some((key, pending)) if *key == opener => *pending += change,
            _ => {
                self.flush();
                self.recent = Some((opener, change));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((opener, change)) = self.recent.take()
            && change != 0
        {
            let n = self.by_opener.entry(opener).or_default();
            *n = Self::sum(*n, change);
        }
    }

    /// Counts never go below 0 (a count is only taken back for a socket
    /// that added it).
    fn sum(n: u32, change: i64) -> u32 {
        u32::try_from((i64::from(n) + change).max(0)).unwrap_or(u32::MAX)
    }

    fn get(&self, opener: (u32, u64)) -> u32 {
        let n = self.by_opener.get(&opener).copied().unwrap_or(0);
        match self.recent {
            Some((key, change)) if key == opener => Self::sum(n, change),
            _ => n,
        }
    }

    /// Folds the pending change in and drops the openers with none open
    /// (a count that reaches 0 stays until then: a churning process would
    /// otherwise remove and re-insert it with every connection). Returns
    /// the openers with sockets open.
    fn settle(&mut self) -> &FastMap<(u32, u64), u32> {
        self.flush();
        self.by_opener.retain(|_, open| *open > 0);
        &self.by_opener
    }
}

/// How cookie indexes hash (FxHash: cookies are the kernel's counter);
/// the snapshot's index ([`crate::sockets::ByCookie`]) uses it too.
pub(crate) fn cookie_hash(cookie: u64) -> u64 {
    use std::hash::BuildHasher as _;
    rustc_hash::FxBuildHasher.hash_one(cookie)
}

impl CookieIndex {
    fn get(&self, cookie: u64, slots: &Slots) -> Option<u32> {
        self.ids
            .find(cookie_hash(cookie), |&id| slots.get(id).cookie == cookie)
            .copied()
    }

    fn contains(&self, cookie: u64, slots: &Slots) -> bool {
        self.get(cookie, slots).is_some()
    }

    /// Indexes slot `id` under its cookie, which must not be indexed yet.
    fn insert(&mut self, id: u32, slots: &Slots) {
        let cookie = slots.get(id).cookie;
        self.ids.insert_unique(cookie_hash(cookie), id, |&other| {
            cookie_hash(slots.get(other).cookie)
        });
    }

    fn remove(&mut self, cookie: u64, slots: &Slots) -> Option<u32> {
        Some(self.entry(cookie, slots)?.remove().0)
    }

    /// The index entry of `cookie`: one probe to look at its slot and then
    /// perhaps remove it.
    fn entry(
        &mut self,
        cookie: u64,
        slots: &Slots,
    ) -> Option<hashbrown::hash_table::OccupiedEntry<'_, u32>> {
        self.ids
            .find_entry(cookie_hash(cookie), |&id| slots.get(id).cookie == cookie)
            .ok()
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[derive(Debug, Default)]
pub struct SocketTable {
    index: CookieIndex,
    slots: Slots,
    origins: Origins,
    /// How released sockets ended, while they wait for their destroy (only
    /// `events` keeps them: the reports forget a socket at its close).
    closed: FastMap<u64, Closed>,
    groups: Groups,
    /// Openers that exited since the last sweep: their group counts go once
    /// none of their sockets is open any more.
    exited: Vec<(u32, u64)>,
    /// Open sockets per opener (pid, start): what an exit needs to know
    /// without scanning every socket.
    open_counts: OpenCounts,
    /// Cookies released or destroyed since [`SocketTable::record_departures`]:
    /// a snapshot taken meanwhile may still list them, and must not bring
    /// them back as pre-existing (their close will never come again).
    departed: Option<rustc_hash::FxHashSet<u64>>,
    limits: Limits,
    stats: TableStats,
}

impl SocketTable {
    pub fn new(limits: Limits) -> Self {
        SocketTable {
            limits,
            ..SocketTable::default()
        }
    }

    pub fn apply(&mut self, event: &Event) -> Applied {
        if let Some(departed) = &mut self.departed
            && let Event::Close(Close { cookie, .. }) | Event::Destroy(Destroy { cookie, .. }) =
                event
        {
            departed.insert(*cookie);
        }
        let applied = match event {
            Event::Open(open) => self.open(open),
            Event::State(change) => self.state(change),
            Event::Close(close) => self.close(close),
            Event::Destroy(destroy) => {
                if self.remove(destroy.cookie) {
                    self.stats.destroyed += 1;
                    Applied::Destroyed
                } else {
                    Applied::Untracked
                }
            }
            Event::Exit(exit) => self.exit(exit),
            // The stack resolver's and the Go probes' business.
            Event::Stack(_) | Event::Exec(_) => return Applied::Ignored,
        };
        if applied == Applied::Untracked {
            self.stats.untracked_events += 1;
        }
        applied
    }

    /// The socket as the rest of leakbpf sees it.
    fn view(&self, slot: &Slot) -> Socket {
        let origin = self.origins.get(slot.origin);
        let cookie = slot.cookie;
        Socket {
            cookie,
            opener: origin.opener.task(slot.tid),
            direction: origin.direction,
            opened_ns: slot.opened_ns,
            endpoints: slot.endpoints,
            fd: (slot.fd >= 0).then_some(slot.fd),
            user_stack: origin.user_stack,
            leaf_caller: origin.leaf_caller,
            kernel_stack: origin.kernel_stack,
            request_stack: origin.request_stack,
            closed: self.closed_of(cookie).cloned(),
        }
    }

    /// How socket `cookie` was released, if it was. The reports keep no
    /// released socket, so their map stays empty and this hashes nothing.
    fn closed_of(&self, cookie: u64) -> Option<&Closed> {
        if self.closed.is_empty() {
            return None;
        }
        self.closed.get(&cookie)
    }

    fn group_key_of(&self, slot: &Slot) -> GroupKey {
        self.origins.get(slot.origin).group_key()
    }

    fn opener_of(&self, slot: &Slot) -> (u32, u64) {
        let opener = &self.origins.get(slot.origin).opener;
        (opener.pid, opener.start_ns)
    }

    /// Forgets socket `cookie`; false if it was not tracked.
    fn remove(&mut self, cookie: u64) -> bool {
        let Some(id) = self.index.remove(cookie, &self.slots) else {
            return false;
        };
        let slot = *self.slots.get(id);
        if self.closed.remove(&cookie).is_none() {
            let opener = self.opener_of(&slot);
            self.open_counts.add(opener, -1);
        }
        self.origins.release(slot.origin);
        self.slots.remove(id);
        true
    }

    /// Forgets the open/close counts of groups `keep` rejects that have no
    /// open socket: a process that lives for weeks and opens from ever new
    /// stacks would otherwise grow the counts without bound. A group that
    /// opens again starts from zero. Returns how many went.
    pub fn retain_groups(&mut self, keep: impl Fn(&GroupKey) -> bool) -> usize {
        let open: std::collections::HashSet<GroupKey> = self
            .index
            .ids()
            .map(|id| self.slots.get(id))
            .filter(|slot| self.closed_of(slot.cookie).is_none())
            .map(|slot| self.group_key_of(slot))
            .collect();
        let before = self.groups.len();
        self.groups.retain(|key| open.contains(key) || keep(key));
        before - self.groups.len()
    }

    /// Groups with open/close counts kept.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Open sockets the process `pid` started at `start_ns` opened.
    pub fn open_by(&self, pid: u32, start_ns: u64) -> u32 {
        self.open_counts.get((pid, start_ns))
    }

    fn open(&mut self, open: &Open) -> Applied {
        if self.index.contains(open.cookie, &self.slots) {
            // A tracked socket that connects again starts over.
            self.remove(open.cookie);
        } else if self.index.len() >= self.limits.max_sockets {
            self.stats.dropped_full += 1;
            return Applied::DroppedFull;
        }
        self.stats.opened += 1;
        let origin = self.origins.intern_open(open);
        let slot = Slot::new(
            open.cookie,
            origin,
            open.task.tid,
            open.fd,
            open.time_ns,
            &open.endpoints,
        );
        let group = self.origins.group(origin, &mut self.groups);
        self.groups.counts_mut(group).opened += 1;
        self.open_counts.add((open.task.pid, open.task.start_ns), 1);
        let id = self.slots.insert(slot);
        self.index.insert(id, &self.slots);
        Applied::Opened
    }

    /// Tracks a socket found already open when tracing started (see
    /// [`crate::sockets`]). `now_ns` stands in for its unknown open time.
    pub fn insert_preexisting(
        &mut self,
        cookie: u64,
        holder: &Task,
        endpoints: Endpoints,
        fd: Option<i32>,
        now_ns: u64,
    ) -> Applied {
        if self.index.contains(cookie, &self.slots)
            || self
                .departed
                .as_ref()
                .is_some_and(|departed| departed.contains(&cookie))
        {
            return Applied::Untracked;
        }
        if self.index.len() >= self.limits.max_sockets {
            self.stats.dropped_full += 1;
            return Applied::DroppedFull;
        }
        self.stats.preexisting += 1;
        self.open_counts.add((holder.pid, holder.start_ns), 1);
        let origin = self.origins.intern(Origin {
            opener: TaskKey::of(holder),
            direction: Direction::Preexisting,
            user_stack: Stack::Missing(0),
            leaf_caller: None,
            kernel_stack: Stack::Missing(0),
            request_stack: Stack::NOT_PROBED,
        });
        let id = self.slots.insert(Slot::new(
            cookie, origin, holder.tid, fd, now_ns, &endpoints,
        ));
        self.index.insert(id, &self.slots);
        Applied::Opened
    }

    fn exit(&mut self, exit: &Exit) -> Applied {
        self.stats.exits += 1;
        self.exited.push((exit.task.pid, exit.task.start_ns));
        Applied::Exited
    }

    fn state(&mut self, change: &StateChange) -> Applied {
        let Some(id) = self.index.get(change.cookie, &self.slots) else {
            return Applied::Untracked;
        };
        let slot = self.slots.get_mut(id);
        let old = slot.endpoints.state;
        // The connect's open is taken before the source port is chosen, and
        // a socket moving to CLOSE is unhashed (its port reads 0): keep the
        // best-known tuple, take the new state.
        if change.endpoints.local_port() != 0 {
            slot.endpoints = change.endpoints;
        }
        slot.endpoints.state = change.endpoints.state;
        Applied::StateChanged { old }
    }

    fn close(&mut self, close: &Close) -> Applied {
        if self.closed_of(close.cookie).is_some() {
            // A socket is released once; a second release is a lost destroy
            // followed by cookie confusion we cannot resolve: ignore it.
            return Applied::Untracked;
        }
        let Some(entry) = self.index.entry(close.cookie, &self.slots) else {
            return Applied::Untracked;
        };
        let id = *entry.get();
        let slot = *self.slots.get(id);
        self.stats.closed += 1;
        let opener = &self.origins.get(slot.origin).opener;
        self.open_counts.add((opener.pid, opener.start_ns), -1);
        if let Some(group) = self.origins.existing_group(slot.origin, &self.groups) {
            self.groups.counts_mut(group).closed += 1;
        }
        if self.limits.forget_closed {
            entry.remove();
            self.origins.release(slot.origin);
            self.slots.remove(id);
        } else {
            self.closed.insert(
                close.cookie,
                Closed {
                    time_ns: close.time_ns,
                    by_pid: close.task.pid,
                    state: close.state,
                },
            );
        }
        Applied::Closed
    }

    /// Forgets closed sockets whose destroy has not come within the
    /// retention time. Call it now and then with the current monotonic time.
    /// Also drops the open/close counts of exited openers that hold no
    /// open socket any more (a reused pid then starts with fresh counts).
    pub fn sweep(&mut self, now_ns: u64) {
        self.origins.sweep();
        let retention = self.limits.closed_retention_ns;
        let expired: Vec<u64> = self
            .closed
            .iter()
            .filter(|(_, closed)| now_ns.saturating_sub(closed.time_ns) >= retention)
            .map(|(cookie, _)| *cookie)
            .collect();
        for cookie in expired {
            self.remove(cookie);
        }
        let open_by_opener = self.open_counts.settle();
        if !self.exited.is_empty() {
            // Through the per-opener index: no scan of every socket.
            let exited: std::collections::HashSet<(u32, u64)> =
                std::mem::take(&mut self.exited).into_iter().collect();
            self.groups.retain(|key| {
                let opener = (key.pid, key.start_ns);
                !exited.contains(&opener) || open_by_opener.contains_key(&opener)
            });
        }
    }

    /// From now until [`SocketTable::stop_recording_departures`], remembers
    /// the cookies of the closes and destroys applied, so that sockets a
    /// snapshot taken meanwhile still lists are not re-added as
    /// pre-existing: the agent takes its snapshot while events keep coming.
    pub fn record_departures(&mut self) {
        self.departed = Some(rustc_hash::FxHashSet::default());
    }

    pub fn stop_recording_departures(&mut self) {
        self.departed = None;
    }

    /// Forgets open sockets that the kernel, read at `taken_ns`, says are
    /// gone (`still_open` is false): their close was lost (a full ring).
    /// Sockets opened after `taken_ns` are not judged. Returns how many went.
    pub fn reconcile(&mut self, taken_ns: u64, still_open: impl Fn(&Socket) -> bool) -> usize {
        let gone: Vec<u64> = self
            .index
            .ids()
            .map(|id| self.slots.get(id))
            .filter(|slot| {
                slot.opened_ns < taken_ns
                    && self.closed_of(slot.cookie).is_none()
                    && !still_open(&self.view(slot))
            })
            .map(|slot| slot.cookie)
            .collect();
        for &cookie in &gone {
            self.remove(cookie);
        }
        self.stats.reconciled += gone.len() as u64;
        gone.len()
    }

    /// Whether it tracks `cookie` (open, or closed and waiting for its
    /// destroy), without building the socket's view.
    pub fn contains(&self, cookie: u64) -> bool {
        self.index.contains(cookie, &self.slots)
    }

    pub fn get(&self, cookie: u64) -> Option<Socket> {
        let id = self.index.get(cookie, &self.slots)?;
        Some(self.view(self.slots.get(id)))
    }

    /// Every tracked socket, open or closed and waiting for its destroy.
    pub fn sockets(&self) -> impl Iterator<Item = Socket> + '_ {
        self.index.ids().map(|id| self.view(self.slots.get(id)))
    }

    /// Sockets whose last file reference has not been released.
    pub fn open_sockets(&self) -> impl Iterator<Item = Socket> + '_ {
        self.index.ids().filter_map(|id| {
            let slot = self.slots.get(id);
            self.closed_of(slot.cookie)
                .is_none()
                .then(|| self.view(slot))
        })
    }

    /// What the tracked sockets were opened by and from, once per distinct
    /// origin rather than once per socket: what caches of stacks and frames
    /// must keep. A socket closed and waiting for its destroy (only `events`
    /// and the agent keep those) still counts.
    pub fn origins_in_use(&self) -> impl Iterator<Item = OriginInUse> + '_ {
        self.origins
            .records
            .iter()
            .filter(|(_, refs, _)| *refs != 0 && *refs != FREED)
            .map(|(origin, _, _)| OriginInUse {
                opener: (origin.opener.pid, origin.opener.start_ns),
                user_stack: origin.user_stack,
                leaf_caller: origin.leaf_caller,
                kernel_stack: origin.kernel_stack,
                request_stack: origin.request_stack,
            })
    }

    /// Opens and closes of one group while tracing.
    pub fn group_counts(&self, key: &GroupKey) -> GroupCounts {
        self.groups.get(key).unwrap_or_default()
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Distinct origins (opener, direction, stacks) interned now.
    pub fn origins(&self) -> usize {
        self.origins.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Destroy;

    fn task(pid: u32) -> Task {
        Task {
            pid,
            tid: pid,
            cgroup_id: 1,
            comm: format!("p{pid}").as_str().into(),
            start_ns: u64::from(pid) * 1000,
        }
    }

    fn endpoints(local_port: u16, state: TcpState) -> Endpoints {
        Endpoints::new(
            format!("127.0.0.1:{local_port}").parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            state,
        )
    }

    fn open(cookie: u64, pid: u32, time_ns: u64) -> Event {
        Event::Open(Box::new(Open {
            time_ns,
            cookie,
            task: task(pid),
            endpoints: endpoints(0, TcpState::SynSent),
            direction: Direction::Connect,
            fd: None,
            user_stack: Stack::Id(1),
            kernel_stack: Stack::Id(2),
            user_sp: 0,
            request_stack: Stack::NOT_PROBED,
            user_stack_top: [0; leakbpf_common::USER_STACK_TOP_WORDS],
            leaf_caller: None,
        }))
    }

    fn state(cookie: u64, time_ns: u64, to: TcpState) -> Event {
        Event::State(StateChange {
            time_ns,
            cookie,
            old: TcpState::SynSent,
            endpoints: endpoints(40000, to),
        })
    }

    fn close(cookie: u64, pid: u32, time_ns: u64) -> Event {
        Event::Close(Close {
            time_ns,
            cookie,
            task: task(pid),
            state: TcpState::Established,
        })
    }

    #[test]
    fn reconcile_forgets_only_what_the_kernel_no_longer_has() {
        let mut table = SocketTable::default();
        for cookie in 1..=4 {
            table.apply(&open(cookie, 7, 100));
            table.apply(&state(cookie, 110, TcpState::Established));
        }
        table.apply(&open(5, 7, 500)); // opened after the kernel was read
        table.apply(&close(4, 7, 200)); // closed: not judged
        // The kernel has 1 and 2; the close of 3 was lost; 5 is too young.
        let removed = table.reconcile(300, |s| s.cookie == 1 || s.cookie == 2);
        assert_eq!(removed, 1);
        let mut open: Vec<u64> = table.open_sockets().map(|s| s.cookie).collect();
        open.sort_unstable();
        assert_eq!(open, [1, 2, 5]);
        assert_eq!(table.open_by(7, 7000), 3, "the index follows");
        assert!(
            table.get(4).is_some(),
            "closed sockets wait for their destroy"
        );
        assert_eq!(table.stats().reconciled, 1);
    }

    /// Every tracked socket costs its slot, plus a 4-byte bucket in the
    /// cookie index and its slack (BENCHMARKS.md measures the whole); what
    /// sockets share (opener, stacks) is interned.
    #[test]
    fn a_socket_stays_small() {
        assert!(size_of::<Slot>() <= 72, "{}", size_of::<Slot>());
    }

    /// Sockets opened the same way by the same process share one origin,
    /// and it goes with the last of them; the view puts every fact back.
    #[test]
    fn origins_are_shared_and_released() {
        let mut table = SocketTable::new(Limits {
            forget_closed: true,
            ..Limits::default()
        });
        for cookie in 1..=3 {
            table.apply(&open(cookie, 100, 10));
        }
        table.apply(&open(4, 101, 10));
        assert_eq!(table.origins(), 2);
        let socket = table.get(2).unwrap();
        assert_eq!(socket.opener.pid, 100);
        assert_eq!(socket.opener.comm, "p100");
        assert_eq!(socket.user_stack, Stack::Id(1));
        assert_eq!(socket.kernel_stack, Stack::Id(2));
        assert_eq!(socket.fd, None);
        assert_eq!(socket.opened_ns, 10);
        assert_eq!(socket.endpoints, endpoints(0, TcpState::SynSent));
        for cookie in 1..=3 {
            table.apply(&close(cookie, 100, 20));
        }
        // Kept until the next sweep: a churn from the same code reuses it.
        assert_eq!(table.origins(), 2);
        table.sweep(30);
        assert_eq!(table.origins(), 1);
        // A freed slot and origin are reused.
        table.apply(&open(5, 100, 30));
        assert_eq!(table.origins(), 2);
        assert_eq!(table.get(5).unwrap().opener.pid, 100);
    }

    /// IPv6 addresses and a link-local scope survive the compact slot.
    #[test]
    fn the_compact_tuple_keeps_every_address() {
        for (local, remote) in [
            ("127.0.0.1:40000", "10.1.2.3:8080"),
            ("[::1]:40000", "[2001:db8::1]:443"),
            ("[fe80::1%3]:40000", "[fe80::2%3]:22"),
        ] {
            let endpoints = Endpoints::new(
                local.parse().unwrap(),
                remote.parse().unwrap(),
                TcpState::CloseWait,
            );
            assert_eq!(Slot::new(0, 0, 0, None, 0, &endpoints).endpoints, endpoints);
        }
    }

    #[test]
    fn tracks_a_connection_through_its_life() {
        let mut table = SocketTable::default();
        assert_eq!(table.apply(&open(1, 100, 10)), Applied::Opened);
        assert_eq!(
            table.apply(&state(1, 20, TcpState::Established)),
            Applied::StateChanged {
                old: TcpState::SynSent
            }
        );
        let socket = table.get(1).unwrap();
        assert_eq!(
            socket.endpoints.local_port(),
            40000,
            "tuple completed by the state event"
        );
        assert_eq!(table.open_sockets().count(), 1);

        assert_eq!(table.apply(&close(1, 100, 1_010)), Applied::Closed);
        assert_eq!(table.get(1).unwrap().opened_ns, 10, "its lifetime's start");
        assert_eq!(table.open_sockets().count(), 0);
        assert_eq!(table.len(), 1, "remembered until destroyed");
        assert_eq!(
            table.apply(&Event::Destroy(Destroy {
                time_ns: 2_000,
                cookie: 1
            })),
            Applied::Destroyed
        );
        assert!(table.is_empty());
        let stats = table.stats();
        assert_eq!((stats.opened, stats.closed, stats.destroyed), (1, 1, 1));
    }

    #[test]
    fn an_unhashed_socket_keeps_its_last_known_tuple() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 10));
        table.apply(&state(1, 20, TcpState::Established));
        let mut closing = state(1, 30, TcpState::Close);
        if let Event::State(change) = &mut closing {
            change.endpoints.set_local_port(0);
        }
        table.apply(&closing);
        let socket = table.get(1).unwrap();
        assert_eq!(socket.endpoints.local_port(), 40000);
        assert_eq!(socket.endpoints.state, TcpState::Close);
    }

    #[test]
    fn open_sockets_are_the_ones_never_released() {
        let mut table = SocketTable::default();
        for cookie in 1..=5 {
            table.apply(&open(cookie, 100, cookie));
        }
        table.apply(&close(2, 100, 50));
        table.apply(&close(4, 100, 50));
        let mut open: Vec<u64> = table.open_sockets().map(|s| s.cookie).collect();
        open.sort_unstable();
        assert_eq!(open, [1, 3, 5]);
    }

    #[test]
    fn events_for_unknown_sockets_are_counted_not_tracked() {
        let mut table = SocketTable::default();
        assert_eq!(
            table.apply(&state(9, 1, TcpState::Listen)),
            Applied::Untracked
        );
        assert_eq!(table.apply(&close(9, 1, 2)), Applied::Untracked);
        assert_eq!(
            table.apply(&Event::Destroy(Destroy {
                time_ns: 3,
                cookie: 9
            })),
            Applied::Untracked
        );
        assert!(table.is_empty());
        assert_eq!(table.stats().untracked_events, 3);
    }

    /// fork, dup and SCM_RIGHTS hand sockets on: the opener's exit must
    /// not close them; only the release of the last reference does.
    #[test]
    fn an_exit_leaves_sockets_open_for_their_new_holders() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 100, 0));
        table.apply(&open(3, 200, 0));
        table.apply(&close(1, 100, 5));
        let exit = Event::Exit(Exit {
            time_ns: 9,
            task: task(100),
        });
        assert_eq!(table.apply(&exit), Applied::Exited);
        let mut still_open: Vec<u64> = table.open_sockets().map(|s| s.cookie).collect();
        still_open.sort_unstable();
        assert_eq!(still_open, [2, 3], "the exit of the opener closes nothing");
        assert_eq!(table.get(2).unwrap().opener.pid, 100);
        // Released later by the child that inherited it.
        assert_eq!(table.apply(&close(2, 101, 20)), Applied::Closed);
        assert_eq!(table.get(2).unwrap().closed.as_ref().unwrap().by_pid, 101);
        assert_eq!(table.stats().exits, 1);
    }

    /// A late exit of a pid's previous process never touches the sockets
    /// of the new process that got the pid.
    #[test]
    fn a_late_exit_of_a_reused_pid_closes_nothing() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 10));
        table.apply(&close(1, 100, 11));
        table.apply(&open(2, 100, 20)); // the new process with pid 100
        table.apply(&Event::Exit(Exit {
            time_ns: 12,
            task: task(100),
        }));
        let open: Vec<u64> = table.open_sockets().map(|s| s.cookie).collect();
        assert_eq!(open, [2]);
    }

    /// The exit of a pid's previous process (another start time) never
    /// drops the counts of the process that has the pid now.
    #[test]
    fn counts_follow_the_process_not_the_pid() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 0));
        table.apply(&close(1, 100, 1));
        let old = table.get(1).unwrap().group_key();
        let mut reopened = open(2, 100, 2);
        if let Event::Open(open) = &mut reopened {
            open.task.start_ns += 1; // a new process with the same pid
        }
        table.apply(&reopened);
        table.apply(&close(2, 100, 3));
        let new = table.get(2).unwrap().group_key();
        assert_ne!(old, new);
        table.apply(&Event::Exit(Exit {
            time_ns: 4,
            task: task(100), // the old process's late exit
        }));
        table.sweep(5);
        assert_eq!(table.group_counts(&old), GroupCounts::default());
        assert_eq!(
            table.group_counts(&new),
            GroupCounts {
                opened: 1,
                closed: 1
            }
        );
    }

    #[test]
    fn idle_groups_can_be_forgotten_but_not_while_open() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 100, 0));
        table.apply(&close(2, 100, 5));
        table.apply(&close(1, 100, 6));
        table.apply(&open(3, 100, 7)); // same group, still open
        assert_eq!(table.retain_groups(|_| false), 0, "its socket 3 is open");
        table.apply(&close(3, 100, 8));
        assert_eq!(table.retain_groups(|_| true), 0, "kept when asked");
        assert_eq!(table.retain_groups(|_| false), 1);
        assert_eq!(table.group_count(), 0);
    }

    #[test]
    fn counts_of_exited_openers_go_once_nothing_of_theirs_is_open() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 200, 0));
        let key_100 = table.get(1).unwrap().group_key();
        let key_200 = table.get(2).unwrap().group_key();
        table.apply(&close(1, 100, 1));
        for pid in [100, 200] {
            table.apply(&Event::Exit(Exit {
                time_ns: 2,
                task: task(pid),
            }));
        }
        table.sweep(3);
        assert_eq!(table.group_counts(&key_100), GroupCounts::default());
        assert_eq!(
            table.group_counts(&key_200),
            GroupCounts {
                opened: 1,
                closed: 0
            },
            "its socket lives on in another process"
        );
    }

    #[test]
    fn counts_opens_and_closes_per_group() {
        let mut table = SocketTable::default();
        for cookie in 1..=4 {
            table.apply(&open(cookie, 100, 0));
        }
        table.apply(&close(1, 100, 1));
        let key = table.get(2).unwrap().group_key();
        assert_eq!(
            key,
            GroupKey {
                pid: 100,
                start_ns: 100_000,
                direction: Direction::Connect,
                user_stack: Some(1),
                leaf_caller: None,
                request_stack: None,
            }
        );
        assert_eq!(
            table.group_counts(&key),
            GroupCounts {
                opened: 4,
                closed: 1
            }
        );
    }

    #[test]
    fn preexisting_sockets_are_tracked_until_closed() {
        let mut table = SocketTable::default();
        let owner = task(300);
        let ep = endpoints(5000, TcpState::CloseWait);
        assert_eq!(
            table.insert_preexisting(77, &owner, ep, Some(9), 1_000),
            Applied::Opened
        );
        assert_eq!(
            table.insert_preexisting(77, &owner, ep, Some(9), 1_000),
            Applied::Untracked,
            "inserted once"
        );
        let socket = table.get(77).unwrap();
        assert_eq!(
            (socket.direction, socket.fd),
            (Direction::Preexisting, Some(9))
        );
        assert_eq!(table.apply(&close(77, 300, 2_000)), Applied::Closed);
        assert_eq!(table.get(77).unwrap().opened_ns, 1_000, "now_ns at seeding");
        assert_eq!(table.stats().preexisting, 1);
    }

    /// The agent's snapshot runs while events are applied: a socket it
    /// lists may have been released and destroyed meanwhile. Re-added, it
    /// would be a pre-existing socket that never closes (a false suspect).
    #[test]
    fn a_snapshot_does_not_bring_back_what_departed_while_it_ran() {
        let mut table = SocketTable::default();
        let owner = task(300);
        let ep = endpoints(5000, TcpState::Established);
        table.apply(&open(1, 300, 10));
        table.apply(&close(1, 300, 20));
        table.record_departures();
        table.apply(&open(2, 300, 30));
        table.apply(&close(2, 300, 40));
        table.apply(&Event::Destroy(Destroy {
            time_ns: 50,
            cookie: 2,
        }));
        // Released before recording began, destroyed while it ran.
        table.apply(&Event::Destroy(Destroy {
            time_ns: 60,
            cookie: 1,
        }));
        // Never tracked (its open was lost), released while it ran.
        table.apply(&close(3, 300, 70));
        for cookie in 1..=3 {
            assert_eq!(
                table.insert_preexisting(cookie, &owner, ep, Some(9), 80),
                Applied::Untracked,
                "cookie {cookie}"
            );
        }
        assert_eq!(
            table.insert_preexisting(4, &owner, ep, Some(9), 80),
            Applied::Opened,
            "a socket that did not depart is seeded"
        );
        table.stop_recording_departures();
        assert_eq!(
            table.insert_preexisting(2, &owner, ep, Some(9), 90),
            Applied::Opened,
            "the record lasts one snapshot"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_second_release_is_ignored() {
        let mut table = SocketTable::default();
        table.apply(&open(1, 100, 0));
        table.apply(&close(1, 100, 5));
        assert_eq!(table.apply(&close(1, 200, 6)), Applied::Untracked);
        assert_eq!(table.get(1).unwrap().closed.as_ref().unwrap().by_pid, 100);
    }

    #[test]
    fn a_full_table_drops_and_counts() {
        let mut table = SocketTable::new(Limits {
            max_sockets: 2,
            ..Limits::default()
        });
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 100, 0));
        assert_eq!(table.apply(&open(3, 100, 0)), Applied::DroppedFull);
        assert_eq!(table.stats().dropped_full, 1);
        // Reconnecting a tracked socket still works when full.
        assert_eq!(table.apply(&open(2, 100, 1)), Applied::Opened);
    }

    #[test]
    fn a_lean_table_forgets_a_socket_at_its_close() {
        let mut table = SocketTable::new(Limits {
            forget_closed: true,
            ..Limits::default()
        });
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 100, 0));
        assert_eq!(table.apply(&close(1, 100, 10)), Applied::Closed);
        assert!(table.get(1).is_none(), "nothing reports a released socket");
        assert_eq!(table.len(), 1);
        assert_eq!(table.open_by(100, 100_000), 1);
        let counts = table.group_counts(&table.get(2).unwrap().group_key());
        assert_eq!(
            (counts.opened, counts.closed),
            (2, 1),
            "counted all the same"
        );
    }

    #[test]
    fn sweep_forgets_closed_sockets_after_retention_only() {
        let mut table = SocketTable::new(Limits {
            max_sockets: 10,
            closed_retention_ns: 100,
            ..Limits::default()
        });
        table.apply(&open(1, 100, 0));
        table.apply(&open(2, 100, 0));
        table.apply(&close(1, 100, 10));
        table.sweep(50);
        assert_eq!(table.len(), 2);
        table.sweep(110);
        assert_eq!(table.len(), 1);
        assert!(table.get(2).is_some(), "open sockets are never swept");
    }

    /// Invariants under arbitrary event sequences: out-of-order times,
    /// closes before opens, double closes, destroys without closes, exits
    /// of anyone, a table at its cap.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn event() -> impl Strategy<Value = Event> {
            let cookie = 1u64..8;
            let pid = 100u32..104;
            let time = 0u64..1_000;
            prop_oneof![
                (cookie.clone(), pid.clone(), time.clone()).prop_map(|(c, p, t)| open(c, p, t)),
                (cookie.clone(), time.clone(), 0u8..14).prop_map(|(c, t, s)| state(
                    c,
                    t,
                    TcpState::from_kernel(s)
                )),
                (cookie.clone(), pid.clone(), time.clone()).prop_map(|(c, p, t)| close(c, p, t)),
                (cookie, time.clone())
                    .prop_map(|(cookie, time_ns)| Event::Destroy(Destroy { time_ns, cookie })),
                (pid, time).prop_map(|(p, time_ns)| Event::Exit(Exit {
                    time_ns,
                    task: task(p),
                })),
            ]
        }

        proptest! {
            #[test]
            fn the_table_stays_consistent(
                events in proptest::collection::vec(event(), 0..200),
                forget_closed in proptest::bool::ANY,
            ) {
                let mut table = SocketTable::new(Limits {
                    max_sockets: 5,
                    closed_retention_ns: 300,
                    forget_closed,
                });
                let mut released: std::collections::HashSet<u64> = std::collections::HashSet::new();
                for (step, event) in events.iter().enumerate() {
                    let before = table.stats();
                    let applied = table.apply(event);
                    let after = table.stats();
                    // Memory stays bounded by the cap.
                    prop_assert!(table.len() <= 5);
                    // Counters only grow.
                    prop_assert!(after.opened >= before.opened && after.closed >= before.closed);
                    prop_assert!(after.destroyed >= before.destroyed);
                    match (event, &applied) {
                        // A socket is released once: a second release is ignored.
                        (Event::Close(close), Applied::Closed) => {
                            prop_assert!(released.insert(close.cookie), "released twice");
                        }
                        (Event::Open(open), Applied::Opened) => {
                            released.remove(&open.cookie);
                        }
                        (Event::Destroy(destroy), _) => {
                            released.remove(&destroy.cookie);
                            prop_assert!(table.get(destroy.cookie).is_none());
                        }
                        _ => {}
                    }
                    // Never both open and closed.
                    for socket in table.open_sockets() {
                        prop_assert!(socket.closed.is_none());
                        prop_assert!(!released.contains(&socket.cookie));
                        let counts = table.group_counts(&socket.group_key());
                        prop_assert!(counts.closed <= counts.opened, "{counts:?}");
                    }
                    // The per-opener index agrees with a full scan.
                    let mut by_opener: FastMap<(u32, u64), u32> = FastMap::default();
                    for socket in table.open_sockets() {
                        *by_opener.entry((socket.opener.pid, socket.opener.start_ns)).or_default() += 1;
                    }
                    // (Read without settling: the pending change of the
                    // last opener must count as it is.)
                    let counts = &table.open_counts;
                    let known = counts.by_opener.keys().chain(counts.recent.iter().map(|(opener, _)| opener));
                    for &opener in by_opener.keys().chain(known) {
                        prop_assert_eq!(
                            table.open_by(opener.0, opener.1),
                            by_opener.get(&opener).copied().unwrap_or(0)
                        );
                    }
                    // The group arena agrees with its index.
                    let groups = &table.groups;
                    for (key, &id) in &groups.index {
                        let found = groups.find(key).unwrap();
                        prop_assert_eq!(found.id, id);
                        prop_assert!(groups.holds(found));
                        prop_assert!(matches!(&groups.records[id as usize].0, Some((k, _)) if k == key));
                    }
                    prop_assert_eq!(groups.records.iter().filter(|(record, _)| record.is_some()).count(), groups.index.len());
                    for &id in &groups.free {
                        prop_assert!(groups.records[id as usize].0.is_none());
                    }
                    // Every origin's cached group, where still held, is the
                    // group of its key.
                    for (origin, refs, cached) in &table.origins.records {
                        if *refs != FREED && groups.holds(*cached) {
                            prop_assert_eq!(groups.find(&origin.group_key()), Some(*cached));
                        }
                    }
                    if step % 20 == 0 {
                        table.sweep(event.time_ns());
                    }
                    if step % 33 == 0 {
                        table.retain_groups(|key| key.pid % 2 == 0);
                    }
                }
            }
        }
    }
}
