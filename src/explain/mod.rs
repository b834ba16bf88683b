//! Attribution methods, written once over [`Backend`](crate::Backend).
pub mod lafam;
pub use lafam::Explainer;
