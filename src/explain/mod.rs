//! Attribution methods, written once over [`Backend`](crate::Backend).
pub mod eigencam;
pub mod gradcam;
pub mod lafam;
pub mod lrp;
pub mod relax;
pub mod rules;
pub mod ties;
pub use lafam::Explainer;
pub use rules::Composite;
