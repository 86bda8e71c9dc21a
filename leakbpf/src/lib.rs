//! leakbpf's user space. The binary (`main.rs`) only parses arguments and
//! prints errors; everything else lives here.
//!
//! Data flows one way: [`tracer`] loads the kernel side chosen by [`hooks`]
//! and reads ring-buffer records, [`event`] decodes them, [`socket_table`]
//! keeps each socket's owner and state, and the commands render what it knows.
pub mod cli;
pub mod clock;
pub mod commands;
pub mod event;
pub mod filter;
pub mod gopclntab;
pub mod hooks;
pub mod kernel;
pub mod procmaps;
pub mod report;
pub mod socket_table;
pub mod sockets;
pub mod stacks;
pub mod symbolize;
pub mod tracer;
pub mod unwind;
