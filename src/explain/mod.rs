//! Attribution methods, written once over [`Backend`](crate::Backend).
pub mod lafam;
pub mod lrp;
pub mod rules;
pub use lafam::Explainer;
pub use rules::Composite;
