//! aezoo-graph: graph autoencoders after Kipf & Welling (2016), "Variational
//! Graph Auto-Encoders" — graph data sets (Cora and Citeseer bundled, a
//! user's own edge list), the seeded 85/5/10 edge split with sampled
//! non-edges, the normalised adjacency `D^-1/2 (A + I) D^-1/2` as a sparse
//! operator with a backward pass, the GCN layer, and the GAE / VGAE families
//! with the inner-product decoder and its re-weighted loss.

#![forbid(unsafe_code)]

pub mod data;
pub mod loss;
pub mod model;
pub mod sparse;
pub mod split;

pub use data::{Features, Graph, GraphError};
pub use loss::ReconTarget;
pub use model::{Gae, GaeConfig, GraphAutoencoder, GraphFamily, GraphInput, GraphStep, Vgae};
pub use sparse::{Csr, SparseMat};
pub use split::EdgeSplit;
