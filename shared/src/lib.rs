//! Argus domain types shared by the controller, the node agent and the tests: ids, session
//! states, command validation, screen hashing and agent profiles (screen patterns as data).

pub mod command;
pub mod ids;
pub mod labels;
pub mod profile;
pub mod screen;
pub mod selector;
pub mod state;
pub mod time;
