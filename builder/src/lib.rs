//! kiln's build engine as a library: the context scan, the planner, the
//! ops and their cache keys, the scheduler and the executors that run a
//! step. The `kiln` binary (`src/bin/kiln/`) is the command line around it.

pub mod context;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod progress;
pub mod registry;
