//! Pipelines as data (workflows/*.yaml): the workflow format, the plan of steps in order
//! (needs, matrices, conditions), the gates that decide whether a step may run here, and
//! the runner that starts each step in its own process group with its timeout.

pub(crate) mod gates;
pub(crate) mod plan;
pub(crate) mod process;
pub(crate) mod run;
pub(crate) mod workflow;
