//! aezoo-zoo: the zoo itself — every family in one table ([`ZOO`]), the
//! built-in entries (`configs/*.json`, embedded at build time) and compare
//! protocols, the default entry of each command that needs one, and the
//! tools that need a concrete family: codec files and rate-distortion
//! ([`codec`], [`rd_image`]), the video codebook sweep ([`rd_video`]) and
//! the graph pipeline ([`graph`]).
//!
//! Adding an image family is one crate implementing `aezoo_nn::Family`, one
//! line in [`FAMILIES`] and a `configs/<entry>.json`; nothing in the trainer,
//! evaluator or CLI names a family.

#![forbid(unsafe_code)]

pub mod codec;
pub mod graph;
pub mod import;
pub mod rd_image;
pub mod rd_video;
pub mod results;

use aezoo_train::{DynFamily, Registered, Zoo};

include!(concat!(env!("OUT_DIR"), "/builtin_entries.rs"));

/// Every image autoencoder family, one line each.
pub static FAMILIES: &[&dyn DynFamily] = &[
    &Registered::<aezoo_ae::MlpAe>::NEW,
    &Registered::<aezoo_ae::ConvAe>::NEW,
    &Registered::<aezoo_vae::MlpVae>::NEW,
    &Registered::<aezoo_vae::ConvVae>::NEW,
    &Registered::<aezoo_vae::FlexVae>::NEW,
    &Registered::<aezoo_video::VideoAe>::NEW,
    &Registered::<aezoo_compress::Codec>::NEW,
    &Registered::<aezoo_diffusers::AutoencoderKl>::NEW,
    &Registered::<aezoo_diffusers::AutoencoderTiny>::NEW,
];

/// The zoo: image families, the graph pipeline's families, built-in
/// entries and protocols.
pub static ZOO: Zoo = Zoo {
    families: FAMILIES,
    pipelines: &[&graph::GraphPipeline],
    entries: BUILTIN,
    protocols: PROTOCOLS,
    importers: &[&import::Diffusers],
};

/// A command that works on one entry when none is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `aezoo compress`: the codec whose weights ship for small images.
    Compress,
    /// `aezoo rd`: the photo codec's rate points.
    RateDistortion,
    /// `aezoo fuzz`: the small shipped image model its weights, latents and
    /// image targets load.
    FuzzModel,
    /// `aezoo fuzz`: the entry its trainer-state target checkpoints.
    FuzzTraining,
}

/// The entry (or entry group) each [`Task`] uses by default.
pub static DEFAULT_ENTRIES: &[(Task, &str)] = &[
    (Task::Compress, "codec-mnist"),
    (Task::RateDistortion, "codec-photo"),
    (Task::FuzzModel, "ae-conv"),
    (Task::FuzzTraining, "ae-mlp"),
];

/// The default entry of `task`.
pub fn default_entry(task: Task) -> &'static str {
    DEFAULT_ENTRIES
        .iter()
        .find(|(t, _)| *t == task)
        .map(|(_, e)| *e)
        .expect("every task has a default entry")
}
