//! aezoo-diffusers: the VAEs people have on disk, in diffusers' layout —
//! [`AutoencoderKl`] (`vae-kl`: Stable Diffusion 1.x / 2.x, SDXL and their
//! fine-tunes; Rombach et al. 2022) and [`AutoencoderTiny`] (`vae-tiny`:
//! TAESD, TAESDXL) — built from the fields of diffusers' own `config.json`,
//! with diffusers' safetensors keys as parameter names, pinned to diffusers
//! by `scripts/pins/diffusers_vae_ref.py`. [`import`] reads their configs
//! and the older key layouts (legacy attention names, LDM single files).

#![forbid(unsafe_code)]

pub mod blocks;
pub mod import;
mod kl;
mod latent;
mod tiny;

pub use kl::{AutoencoderKl, KlConfig, SampleSize};
pub use tiny::{AutoencoderTiny, TinyConfig};
