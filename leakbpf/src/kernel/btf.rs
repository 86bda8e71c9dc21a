//! Struct member offsets from the kernel's BTF.
//!
//! The kernel describes its own types in BTF at [`VMLINUX_BTF`]. This module
//! answers one question about them: where, in bytes, does a (possibly nested)
//! member of a struct live and how big is it. That is all the eBPF side needs
//! to read a field with `bpf_probe_read_kernel` without CO-RE.
//!
//! Member paths are dot-separated names, as in C: `__sk_common.skc_daddr`.
//! Members of anonymous unions and structs are found as C finds them, without
//! naming the anonymous level (`struct sock_common` keeps `skc_dport` inside
//! an anonymous struct inside an anonymous union). Bitfields are refused: the
//! eBPF side reads whole bytes and would need a mask and shift we do not pass.

use std::path::Path;

use btf_rs::Type;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Bounds every walk along BTF type references, so malformed BTF (a typedef
/// cycle, absurd nesting) yields an error instead of a hang or a stack
/// overflow. Real kernel chains are a handful of links long.
const MAX_DEPTH: usize = 64;

/// Where a struct member lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the outermost struct named in the query.
    pub offset: u32,
    /// Bytes the member occupies (typedefs and qualifiers followed).
    pub size: u32,
}

/// Why a member could not be located. Every message names the struct, the
/// member path and the BTF it was looked up in, since these errors end up in
/// front of users running leakbpf on a kernel we have never seen.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {origin}: {error}")]
    Load {
        origin: String,
        error: btf_rs::Error,
    },
    #[error("no struct {struct_name} in {origin}")]
    NoStruct { struct_name: String, origin: String },
    #[error("struct {struct_name} has no member {member} in {origin}")]
    NoMember {
        struct_name: String,
        member: String,
        origin: String,
    },
    #[error(
        "struct {struct_name} has no member {member} in {origin}: \
         {prefix} is not a struct or union"
    )]
    NotAggregate {
        struct_name: String,
        member: String,
        prefix: String,
        origin: String,
    },
    #[error(
        "struct {struct_name} member {member} is a bitfield in {origin}; \
         only whole-byte members can be read"
    )]
    Bitfield {
        struct_name: String,
        member: String,
        origin: String,
    },
    #[error("struct {struct_name} member {member} in {origin}: {reason}")]
    Malformed {
        struct_name: String,
        member: String,
        origin: String,
        reason: String,
    },
}

/// Parsed BTF plus the name of where it came from (for error messages).
pub struct Btf {
    raw: btf_rs::Btf,
    origin: String,
    pointer_size: u32,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("origin", &self.origin)
            .field("pointer_size", &self.pointer_size)
            .finish_non_exhaustive()
    }
}

/// A member found inside an aggregate, with offsets in bits relative to the
/// aggregate the search started from.
struct Found {
    member: btf_rs::Member,
    bit_offset: u64,
    /// Start of the member declared right after it in the same struct; `None`
    /// in a union or for the last member. Used to spot bitfields in BTF that
    /// predates `kind_flag` (see [`Btf::member`]).
    next_bit_offset: Option<u64>,
}

impl Btf {
    /// Loads the running kernel's BTF from [`VMLINUX_BTF`].
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_path(VMLINUX_BTF)
    }

    /// Loads a stand-alone (non-split) BTF file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        match btf_rs::Btf::from_file(path) {
            Ok(raw) => Ok(Self::new(raw, origin)),
            Err(error) => Err(BtfError::Load { origin, error }),
        }
    }

    /// Parses stand-alone BTF from memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, BtfError> {
        let origin = origin.to_owned();
        match btf_rs::Btf::from_bytes(bytes) {
            Ok(raw) => Ok(Self::new(raw, origin)),
            Err(error) => Err(BtfError::Load { origin, error }),
        }
    }

    fn new(raw: btf_rs::Btf, origin: String) -> Self {
        // BTF has no pointer size of its own. The kernel's `unsigned long` is
        // its word size (LP64 / ILP32), so that is what a pointer member takes.
        let pointer_size = raw
            .resolve_types_by_name("long unsigned int")
            .unwrap_or_default()
            .into_iter()
            .find_map(|ty| match ty {
                Type::Int(int) => u32::try_from(int.size()).ok(),
                _ => None,
            })
            .unwrap_or(usize::BITS / 8);
        Self {
            raw,
            origin,
            pointer_size,
        }
    }

    /// Number of parameters of kernel function `name`, or `None` if the
    /// BTF has no such function (not built in, renamed, or fully inlined).
    /// A fexit program finds the return value right after the parameters.
    pub fn function_arity(&self, name: &str) -> Option<usize> {
        let types = self.raw.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|ty| match ty {
            Type::Func(func) => match self.raw.resolve_chained_type(&func).ok()? {
                Type::FuncProto(proto) => Some(proto.parameters.len()),
                _ => None,
            },
            _ => None,
        })
    }

    /// Where this BTF was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Offset and size of `path` (dot-separated, e.g. `__sk_common.skc_num`)
    /// inside `struct struct_name`.
    ///
    /// Bitfields are rejected with [`BtfError::Bitfield`]. BTF from pahole
    /// marks them with `kind_flag`; older BTF encodes them only in the width
    /// of the member's int type, which btf-rs does not expose, so there a
    /// member that is not byte-aligned or that overlaps the next member of
    /// its struct is taken to be a bitfield.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, BtfError> {
        let fail = Failure {
            btf: self,
            struct_name,
            path,
        };
        let mut aggregate = self.find_struct(struct_name)?;
        let mut is_union = false;
        let mut base_bits = 0u64;
        let segments: Vec<&str> = path.split('.').collect();
        for (index, name) in segments.iter().enumerate() {
            let walked = || segments[..=index].join(".");
            if name.is_empty() {
                return Err(fail.no_member());
            }
            let found = self
                .find_member(&aggregate, is_union, name, 0)
                .map_err(|e| fail.malformed(&e))?
                .ok_or_else(|| fail.no_member())?;
            let ty = self
                .raw
                .resolve_chained_type(&found.member)
                .map_err(|e| fail.malformed(&e))?;
            let size = self
                .size_of(ty.clone(), 0)
                .map_err(|e| fail.malformed(&e))?;
            let bits = base_bits + found.bit_offset;
            let is_bitfield = !bits.is_multiple_of(8)
                || match found.member.bitfield_size() {
                    // kind_flag set: the width is recorded, 0 means "not a bitfield".
                    Some(width) => width != 0,
                    // kind_flag clear: infer from the layout.
                    None => found
                        .next_bit_offset
                        .is_some_and(|next| next < found.bit_offset + size * 8),
                };
            if is_bitfield {
                return Err(BtfError::Bitfield {
                    struct_name: struct_name.to_owned(),
                    member: walked(),
                    origin: self.origin.clone(),
                });
            }
            if index + 1 == segments.len() {
                let offset = u32::try_from(bits / 8)
                    .map_err(|_| fail.malformed_msg("offset does not fit in 32 bits"))?;
                let size = u32::try_from(size)
                    .map_err(|_| fail.malformed_msg("size does not fit in 32 bits"))?;
                return Ok(Member { offset, size });
            }
            (aggregate, is_union) =
                match self.strip_modifiers(ty).map_err(|e| fail.malformed(&e))? {
                    Type::Struct(inner) => (inner, false),
                    Type::Union(inner) => (inner, true),
                    _ => {
                        return Err(BtfError::NotAggregate {
                            struct_name: struct_name.to_owned(),
                            member: path.to_owned(),
                            prefix: walked(),
                            origin: self.origin.clone(),
                        });
                    }
                };
            base_bits = bits;
        }
        // `split` always yields at least one segment; keep a sane answer anyway.
        Err(fail.no_member())
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let no_struct = || BtfError::NoStruct {
            struct_name: name.to_owned(),
            origin: self.origin.clone(),
        };
        // The same name can belong to a forward declaration, a typedef or a
        // function too; only the struct definition has members.
        self.raw
            .resolve_types_by_name(name)
            .map_err(|_| no_struct())?
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(no_struct)
    }

    /// Looks `name` up among the members of `aggregate`, descending into
    /// anonymous struct and union members the way C name lookup does.
    fn find_member(
        &self,
        aggregate: &btf_rs::Struct,
        is_union: bool,
        name: &str,
        depth: usize,
    ) -> btf_rs::Result<Option<Found>> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        for (index, member) in aggregate.members.iter().enumerate() {
            let member_name = self.raw.resolve_name(member)?;
            let own_bits = u64::from(member.bit_offset());
            if member_name == name {
                let next_bit_offset = if is_union {
                    None
                } else {
                    aggregate
                        .members
                        .get(index + 1)
                        .map(|next| u64::from(next.bit_offset()))
                };
                return Ok(Some(Found {
                    member: member.clone(),
                    bit_offset: own_bits,
                    next_bit_offset,
                }));
            }
            if !member_name.is_empty() {
                continue;
            }
            let (inner, inner_is_union) =
                match self.strip_modifiers(self.raw.resolve_chained_type(member)?)? {
                    Type::Struct(inner) => (inner, false),
                    Type::Union(inner) => (inner, true),
                    _ => continue,
                };
            if let Some(found) = self.find_member(&inner, inner_is_union, name, depth + 1)? {
                return Ok(Some(Found {
                    member: found.member,
                    bit_offset: own_bits + found.bit_offset,
                    next_bit_offset: found.next_bit_offset.map(|next| own_bits + next),
                }));
            }
        }
        Ok(None)
    }

    /// Follows typedefs, qualifiers and type tags (e.g. `__rcu`) to the type
    /// that has a layout.
    fn strip_modifiers(&self, mut ty: Type) -> btf_rs::Result<Type> {
        for _ in 0..MAX_DEPTH {
            ty = match &ty {
                Type::Typedef(link) => self.raw.resolve_chained_type(link)?,
                Type::Volatile(link) | Type::Const(link) | Type::Restrict(link) => {
                    self.raw.resolve_chained_type(link)?
                }
                Type::TypeTag(link) => self.raw.resolve_chained_type(link)?,
                _ => return Ok(ty),
            };
        }
        Err(too_deep())
    }

    /// Size in bytes of a value of type `ty`.
    fn size_of(&self, ty: Type, depth: usize) -> btf_rs::Result<u64> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(match self.strip_modifiers(ty)? {
            Type::Int(int) => int.size() as u64,
            Type::Ptr(_) => u64::from(self.pointer_size),
            Type::Array(array) => {
                let element = self.size_of(self.raw.resolve_chained_type(&array)?, depth + 1)?;
                (array.len() as u64)
                    .checked_mul(element)
                    .ok_or_else(|| btf_rs::Error::Format("array size overflows".to_owned()))?
            }
            Type::Struct(aggregate) | Type::Union(aggregate) => aggregate.size() as u64,
            Type::Enum(e) => e.size() as u64,
            Type::Enum64(e) => e.size() as u64,
            Type::Float(float) => float.size() as u64,
            other => {
                return Err(btf_rs::Error::Format(format!(
                    "its type ({}) has no size",
                    other.name()
                )));
            }
        })
    }
}

fn too_deep() -> btf_rs::Error {
    btf_rs::Error::Format(format!("type references nest more than {MAX_DEPTH} deep"))
}

/// Builds the errors of one [`Btf::member`] query.
struct Failure<'a> {
    btf: &'a Btf,
    struct_name: &'a str,
    path: &'a str,
}

impl Failure<'_> {
    fn no_member(&self) -> BtfError {
        BtfError::NoMember {
            struct_name: self.struct_name.to_owned(),
            member: self.path.to_owned(),
            origin: self.btf.origin.clone(),
        }
    }

    fn malformed(&self, error: &btf_rs::Error) -> BtfError {
        self.malformed_msg(&error.to_string())
    }

    fn malformed_msg(&self, reason: &str) -> BtfError {
        BtfError::Malformed {
            struct_name: self.struct_name.to_owned(),
            member: self.path.to_owned(),
            origin: self.btf.origin.clone(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use super::*;

    /// The real kernel BTF, parsed once for all tests (it takes a while).
    pub(crate) fn vmlinux() -> &'static Btf {
        static VMLINUX: OnceLock<Btf> = OnceLock::new();
        VMLINUX.get_or_init(|| match Btf::vmlinux() {
            Ok(btf) => btf,
            Err(e) => panic!("{e}"),
        })
    }

    fn member(struct_name: &str, path: &str) -> Member {
        match vmlinux().member(struct_name, path) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    fn error(btf: &Btf, struct_name: &str, path: &str) -> BtfError {
        match btf.member(struct_name, path) {
            Ok(m) => panic!("{struct_name}.{path} unexpectedly resolved to {m:?}"),
            Err(e) => e,
        }
    }

    /// A minimal BTF writer, so layouts the running kernel does not have
    /// (pre-`kind_flag` bitfields, an old `struct sock`) can be tested.
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn push(&mut self, word: u32) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let offset = u32::try_from(self.strings.len()).expect("small test BTF");
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            offset
        }

        fn header(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kind_flag: bool,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.name(name);
            self.push(name_off);
            self.push(u32::from(kind_flag) << 31 | kind << 24 | vlen);
            self.push(size_or_type);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        /// An unsigned int type `bits` wide stored in `size` bytes.
        pub(crate) fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, false, size);
            self.push(bits);
            id
        }

        pub(crate) fn ptr(&mut self, target: u32) -> u32 {
            self.header("", KIND_PTR, 0, false, target)
        }

        pub(crate) fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, false, target)
        }

        pub(crate) fn array(&mut self, element: u32, index: u32, len: u32) -> u32 {
            let id = self.header("", KIND_ARRAY, 0, false, 0);
            self.push(element);
            self.push(index);
            self.push(len);
            id
        }

        /// A struct or union. Members are `(name, type, offset word)`, where
        /// the offset word is the bit offset, or with `kind_flag` set
        /// `bitfield_size << 24 | bit_offset`.
        pub(crate) fn aggregate(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let vlen = u32::try_from(members.len()).expect("few members");
            let id = self.header(name, kind, vlen, kind_flag, size);
            for &(member, ty, offset) in members {
                let name_off = self.name(member);
                self.push(name_off);
                self.push(ty);
                self.push(offset);
            }
            id
        }

        pub(crate) fn build(&self, origin: &str) -> Btf {
            let type_len = u32::try_from(self.types.len()).expect("small test BTF");
            let str_len = u32::try_from(self.strings.len()).expect("small test BTF");
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            bytes.extend_from_slice(&[1, 0]); // version, flags
            for word in [24, 0, type_len, type_len, str_len] {
                bytes.extend_from_slice(&u32::to_le_bytes(word));
            }
            bytes.extend_from_slice(&self.types);
            bytes.extend_from_slice(&self.strings);
            match Btf::from_bytes(&bytes, origin) {
                Ok(btf) => btf,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn sock_common_anonymous_members() {
        // Layout facts that follow from the C declarations on every kernel
        // leakbpf supports: skc_daddr/skc_rcv_saddr share a union with the
        // 8-byte skc_addrpair, skc_dport/skc_num with the 4-byte skc_portpair.
        let daddr = member("sock_common", "skc_daddr");
        let rcv_saddr = member("sock_common", "skc_rcv_saddr");
        assert_eq!(daddr.size, 4);
        assert_eq!(
            rcv_saddr,
            Member {
                offset: daddr.offset + 4,
                size: 4
            }
        );
        let addrpair = member("sock_common", "skc_addrpair");
        assert_eq!(
            addrpair,
            Member {
                offset: daddr.offset,
                size: 8
            }
        );

        let dport = member("sock_common", "skc_dport");
        let num = member("sock_common", "skc_num");
        assert_eq!(dport.size, 2);
        assert_eq!(
            num,
            Member {
                offset: dport.offset + 2,
                size: 2
            }
        );
        let portpair = member("sock_common", "skc_portpair");
        assert_eq!(
            portpair,
            Member {
                offset: dport.offset,
                size: 4
            }
        );
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn dotted_paths_add_up() {
        let common = member("sock", "__sk_common");
        for name in [
            "skc_family",
            "skc_state",
            "skc_num",
            "skc_dport",
            "skc_rcv_saddr",
            "skc_daddr",
            "skc_v6_rcv_saddr",
            "skc_v6_daddr",
            "skc_cookie",
        ] {
            let inner = member("sock_common", name);
            let outer = member("sock", &format!("__sk_common.{name}"));
            assert_eq!(outer.offset, common.offset + inner.offset, "{name}");
            assert_eq!(outer.size, inner.size, "{name}");
        }
        // Two levels of named members: in6_addr's own union is anonymous.
        let v6 = member("sock", "__sk_common.skc_v6_daddr");
        let u6 = member("sock", "__sk_common.skc_v6_daddr.in6_u");
        assert_eq!(u6, v6);
        let words = member("sock", "__sk_common.skc_v6_daddr.in6_u.u6_addr32");
        assert_eq!(
            words,
            Member {
                offset: v6.offset,
                size: 16
            }
        );
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn sizes_follow_typedefs_and_qualifiers() {
        // atomic64_t: typedef to a struct of one s64.
        assert_eq!(member("sock_common", "skc_cookie").size, 8);
        // volatile unsigned char.
        assert_eq!(member("sock_common", "skc_state").size, 1);
        assert_eq!(member("sock_common", "skc_family").size, 2);
        // struct in6_addr.
        assert_eq!(member("sock_common", "skc_v6_daddr").size, 16);
        assert_eq!(member("sock", "sk_protocol").size, 2);
        // Pointers, including __rcu-tagged ones (BTF type tags).
        assert_eq!(member("task_struct", "files").size, 8);
        assert_eq!(member("files_struct", "fdt").size, 8);
        assert_eq!(member("fdtable", "fd").size, 8);
        assert_eq!(member("fdtable", "max_fds").size, 4);
        // Arrays: char comm[TASK_COMM_LEN].
        assert_eq!(member("task_struct", "comm").size, 16);
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn bitfields_are_rejected() {
        // `unsigned char skc_reuse:4` starts on a byte boundary: only
        // kind_flag tells; `skc_reuseport:1` follows it mid-byte.
        for name in ["skc_reuse", "skc_reuseport"] {
            let e = error(vmlinux(), "sock_common", name);
            assert!(matches!(e, BtfError::Bitfield { .. }), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "struct sock_common member {name} is a bitfield in {VMLINUX_BTF}; \
                     only whole-byte members can be read"
                )
            );
        }
        let e = error(vmlinux(), "sock", "__sk_common.skc_reuse");
        assert!(
            e.to_string()
                .contains("member __sk_common.skc_reuse is a bitfield"),
            "{e}"
        );
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn missing_things_are_named() {
        let btf = vmlinux();
        assert_eq!(
            error(btf, "sock", "no_such_member").to_string(),
            format!("struct sock has no member no_such_member in {VMLINUX_BTF}")
        );
        assert_eq!(
            error(btf, "sock", "__sk_common.skc_nope").to_string(),
            format!("struct sock has no member __sk_common.skc_nope in {VMLINUX_BTF}")
        );
        assert!(matches!(
            error(btf, "sock", "__sk_common..skc_num"),
            BtfError::NoMember { .. }
        ));
        assert!(matches!(error(btf, "sock", ""), BtfError::NoMember { .. }));
        assert_eq!(
            error(btf, "no_such_struct_leakbpf", "x").to_string(),
            format!("no struct no_such_struct_leakbpf in {VMLINUX_BTF}")
        );
        assert_eq!(
            error(btf, "sock", "sk_protocol.x").to_string(),
            format!(
                "struct sock has no member sk_protocol.x in {VMLINUX_BTF}: \
                 sk_protocol is not a struct or union"
            )
        );
        // Pointers are not followed: that would be a second memory read.
        assert!(matches!(
            error(btf, "socket", "sk.__sk_common"),
            BtfError::NotAggregate { .. }
        ));
    }

    #[test]
    fn missing_file_is_named() {
        let Err(e) = Btf::from_path("/nonexistent/leakbpf/vmlinux") else {
            panic!("loaded a file that does not exist")
        };
        assert!(
            e.to_string()
                .starts_with("reading BTF from /nonexistent/leakbpf/vmlinux: "),
            "{e}"
        );
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one synthetic BTF with every layout the reader must handle"
    )]
    fn synthetic_layouts() {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4, 32);
        let u8_bits = b.int("unsigned int", 4, 8); // pre-kind_flag bitfield int
        let u16_t = b.int("short unsigned int", 2, 16);
        let u8_t = b.int("unsigned char", 1, 8);
        let ulong = b.int("long unsigned int", 8, 64);
        let arr = b.array(u8_t, u32_t, 6);
        let ptr = b.ptr(u32_t);
        let inner = b.aggregate(true, "", 4, false, &[("x", u32_t, 0), ("y", u16_t, 0)]);
        let counter = b.aggregate(false, "", 8, false, &[("counter", ulong, 0)]);
        let atomic = b.typedef("atomic_long_t", counter);
        b.aggregate(
            false,
            "old",
            40,
            false,
            &[
                ("a", u8_bits, 0),
                ("b", u8_bits, 8),
                ("c", u16_t, 32),
                ("arr", arr, 48),
                ("", inner, 96),
                ("p", ptr, 128),
                ("at", atomic, 192),
                ("last", u8_t, 256),
            ],
        );
        b.aggregate(
            false,
            "new",
            4,
            true,
            &[
                ("flags", u8_t, 4 << 24),
                ("rest", u8_t, 4 << 24 | 4),
                ("whole", u16_t, 16),
            ],
        );
        let btf = b.build("test BTF");

        let m = |s: &str, p: &str| match btf.member(s, p) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(m("old", "c"), Member { offset: 4, size: 2 });
        assert_eq!(m("old", "arr"), Member { offset: 6, size: 6 });
        // Union members overlap by design: not mistaken for bitfields.
        assert_eq!(
            m("old", "x"),
            Member {
                offset: 12,
                size: 4
            }
        );
        assert_eq!(
            m("old", "y"),
            Member {
                offset: 12,
                size: 2
            }
        );
        assert_eq!(
            m("old", "p"),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            m("old", "at"),
            Member {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(
            m("old", "at.counter"),
            Member {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(
            m("old", "last"),
            Member {
                offset: 32,
                size: 1
            }
        );
        assert_eq!(m("new", "whole"), Member { offset: 2, size: 2 });
        // Old-style bitfields: found by overlapping the next member.
        for name in ["a", "b"] {
            assert!(
                matches!(error(&btf, "old", name), BtfError::Bitfield { .. }),
                "{name}"
            );
        }
        // kind_flag bitfields, aligned or not.
        for name in ["flags", "rest"] {
            let e = error(&btf, "new", name);
            assert_eq!(
                e.to_string(),
                format!(
                    "struct new member {name} is a bitfield in test BTF; \
                     only whole-byte members can be read"
                )
            );
        }
    }

    #[test]
    #[ignore = "host: reads this kernel's BTF (/sys/kernel/btf/vmlinux); `./x test` runs it"]
    fn knows_the_arity_of_kernel_functions() {
        let btf = Btf::vmlinux().expect("kernel BTF");
        assert_eq!(btf.function_arity("tcp_connect"), Some(1));
        assert_eq!(btf.function_arity("tcp_close"), Some(2));
        // (sk, flags, err, kern) before 6.10, (sk, arg) since.
        assert!(matches!(btf.function_arity("inet_csk_accept"), Some(2 | 4)));
        assert_eq!(btf.function_arity("no_such_function_in_any_kernel"), None);
    }
}
