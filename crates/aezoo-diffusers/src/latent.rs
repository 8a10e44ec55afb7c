//! What both diffusers VAEs keep around their networks: the latent's
//! scaling (`z = (μ − shift_factor) · scaling_factor`), the tile geometry,
//! and `force_upcast` (half-precision inputs run in the parameters' f32).

use aezoo_nn::model::Spatial;
use candle_core::{DType, Result, Tensor};

/// The latent space of an `AutoencoderKL` / `AutoencoderTiny`.
pub(crate) struct LatentSpace {
    pub(crate) channels: usize,
    pub(crate) spatial: Spatial,
    scale: f64,
    shift: f64,
    force_upcast: bool,
    /// The parameters' dtype: what the networks return.
    pub(crate) dtype: DType,
}

impl LatentSpace {
    /// `sample`: the images' `(h, w)` (the tile), `factor`: pixels per
    /// latent position.
    pub(crate) fn new(
        channels: usize,
        factor: usize,
        sample: [usize; 2],
        (scale, shift): (f64, f64),
        force_upcast: bool,
        dtype: DType,
    ) -> Self {
        Self {
            channels,
            spatial: Spatial {
                factor,
                tile: sample,
                overlap: 0.25,
            },
            scale,
            shift,
            force_upcast,
            dtype,
        }
    }

    /// A network's input, in the parameters' dtype under `force_upcast`.
    pub(crate) fn upcast(&self, xs: &Tensor) -> Result<Tensor> {
        if self.force_upcast {
            xs.to_dtype(self.dtype)
        } else {
            Ok(xs.clone())
        }
    }

    /// A diffusion model's latent from the raw one.
    pub(crate) fn scaled(&self, raw: &Tensor) -> Result<Tensor> {
        raw.affine(self.scale, -self.shift * self.scale)
    }

    /// The raw latent from a diffusion model's.
    pub(crate) fn unscaled(&self, z: &Tensor) -> Result<Tensor> {
        z.affine(1.0 / self.scale, self.shift)
    }

    /// `(C, h/f, w/f)` of the sample size.
    pub(crate) fn shape(&self) -> Vec<usize> {
        let [h, w] = self.spatial.latent_tile();
        vec![self.channels, h, w]
    }

    /// Whether the networks may run in half precision.
    pub(crate) fn half_ok(&self) -> bool {
        !self.force_upcast
    }
}
