//! The leak report: a model ([`model`]) assembled from the socket table
//! ([`assemble`]), classified ([`classify`]) and rendered as text, JSON
//! (serde on the model), pprof or folded stacks.
pub mod assemble;
pub mod classify;
pub mod folded;
pub mod model;
pub mod pprof;
pub mod text;
