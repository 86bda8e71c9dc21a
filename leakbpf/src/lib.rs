//! leakbpf's user space. The binary (`main.rs`) only parses arguments and
//! prints errors; everything else lives here.
//!
//! Data flows one way: [`tracer`] loads the kernel side chosen by [`hooks`]
//! and reads ring-buffer records, [`event`] decodes them, [`socket_table`]
//! keeps each socket's opener and state, [`snapshot`] says who holds what
//! now, and the commands render what they know.
pub mod agent;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod completeness;
pub mod containers;
pub mod event;
pub mod filter;
pub mod go_requests;
pub mod gopclntab;
pub mod hooks;
pub mod kernel;
pub mod privileges;
pub mod procmaps;
pub mod pump;
pub mod report;
pub mod snapshot;
pub mod socket_table;
pub mod sockets;
pub mod stacks;
pub mod symbolize;
pub mod tracer;
pub mod unwind;
