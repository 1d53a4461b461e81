//! The status of a running `lb` (`lb status`): the report's types
//! (`report`, whose JSON is the stable `lb status --json`), the one builder
//! of a report from the policy, the plan, the data plane and the health
//! monitor (`build`), and the one renderer of its human view (`render`).
//! The API socket (`crate::api`) carries it.
mod build;
mod render;
mod report;

pub use build::{ProbeSources, Sources, counter_names, report, target_state};
pub use render::render;
#[cfg(any(test, feature = "testing"))]
pub use report::example;
pub use report::{
    DataPlaneStatus, ErrorStatus, FlowTableStatus, GroupStatus, HealthCheckStatus, HealthStatus,
    ListenerStatus, StatusReport, Stickiness, StickyStatus, TargetState, TargetStatus,
};
