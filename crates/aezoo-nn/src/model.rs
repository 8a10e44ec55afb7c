//! The one trait every aezoo model family implements, so the trainer, the
//! evaluator, the results table and the CLI never special-case a family.
//!
//! Images travel as `(batch, channels, height, width)` f32 tensors in `[0, 1]`
//! everywhere outside a model; a model that works on flat vectors flattens
//! inside. A family is an [`Autoencoder`] plus a [`Family`] impl that builds
//! it from its serde config; the zoo's family table holds one line per family.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rng::Rng;

/// One mini-batch: what the model sees and what it must reproduce (equal for
/// plain autoencoders, clean images for denoising ones).
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(b, c, h, w)` in `[0, 1]`.
    pub input: Tensor,
    /// `(b, c, h, w)` in `[0, 1]`.
    pub target: Tensor,
}

impl Batch {
    /// A batch whose target is its input.
    pub fn autoencode(xs: Tensor) -> Self {
        Self {
            input: xs.clone(),
            target: xs,
        }
    }
}

/// What a step may need besides the batch: whether it trains, the seeded
/// generator for any sampling it does (the VAE's reparameterisation noise),
/// and the dtype its networks compute in.
#[derive(Debug)]
pub struct StepCtx<'a> {
    pub train: bool,
    pub rng: &'a mut Rng,
    /// Mixed precision: the dtype the encoder and decoder networks run in
    /// (bf16/f16 on a GPU), while parameters, sampling and the loss stay in
    /// the parameters' dtype; `None`: the parameters' dtype throughout. Only
    /// families whose [`Autoencoder::mixed_precision`] is true read it.
    pub compute: Option<DType>,
}

impl<'a> StepCtx<'a> {
    /// A training step in the parameters' dtype.
    pub fn train(rng: &'a mut Rng) -> Self {
        Self {
            train: true,
            rng,
            compute: None,
        }
    }

    /// An evaluation step (no training-only noise) in the parameters' dtype.
    pub fn eval(rng: &'a mut Rng) -> Self {
        Self {
            train: false,
            rng,
            compute: None,
        }
    }

    /// `xs` in the dtype the networks compute in (`xs` itself without mixed
    /// precision): a family casts its network input with this, and the
    /// network's output back to the target's dtype before any loss.
    pub fn to_compute(&self, xs: &Tensor) -> Result<Tensor> {
        match self.compute {
            Some(dt) => xs.to_dtype(dt),
            None => Ok(xs.clone()),
        }
    }

    /// The same step with its networks computing in `dtype`.
    pub fn computing_in(self, dtype: DType) -> Self {
        Self {
            compute: Some(dtype),
            ..self
        }
    }
}

/// A step's result: the scalar loss to minimise, its named parts (logged
/// separately), and the reconstruction in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub loss: Tensor,
    pub terms: Vec<(&'static str, Tensor)>,
    pub recon: Tensor,
}

/// An autoencoder of images.
pub trait Autoencoder: Send + Sync {
    /// The code of `xs` (`(b, c, h, w)` in `[0, 1]`); for variational models
    /// the posterior mean.
    fn encode(&self, xs: &Tensor) -> Result<Tensor>;

    /// Images in `[0, 1]` from codes.
    fn decode(&self, z: &Tensor) -> Result<Tensor>;

    /// The deterministic reconstruction used for evaluation.
    fn reconstruct(&self, xs: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(xs)?)
    }

    /// One forward pass with the family's training loss.
    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput>;

    /// Shape of one code (without the batch axis).
    fn latent_shape(&self) -> Vec<usize>;

    /// Whether [`Autoencoder::step`] honours [`StepCtx::compute`] (mixed
    /// precision: networks in half precision, loss and parameters in f32).
    fn mixed_precision(&self) -> bool {
        false
    }

    /// Whether [`Autoencoder::sample`] draws from a prior.
    fn is_generative(&self) -> bool {
        false
    }

    /// `n` images decoded from prior samples, for generative families.
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let _ = (n, rng);
        candle_core::bail!("this model family has no prior to sample from")
    }

    /// For a model of clips (`(b, T, h, w)`, one channel per frame): `T`.
    /// Clip tools (`aezoo show-video`) ask this, not the channel count.
    fn clip_frames(&self) -> Option<usize> {
        None
    }

    /// The values of a learned scalar codebook, if the model quantises its
    /// code to one (`aezoo rd-video` starts a sweep from them).
    fn codebook_levels(&self) -> Option<Result<Tensor>> {
        None
    }

    /// For a fully convolutional model, which takes images of any size that
    /// is a multiple of its downsampling: that factor and the tile it works
    /// best at (the inference commands then read images at their own size,
    /// and tile those larger than the tile). `None`: a fixed input size.
    fn spatial(&self) -> Option<Spatial> {
        None
    }
}

/// How a fully convolutional model maps images to latents (see
/// [`Autoencoder::spatial`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spatial {
    /// Image pixels per latent position along each axis.
    pub factor: usize,
    /// `(height, width)` of the tile, in image pixels (a multiple of `factor`).
    pub tile: [usize; 2],
    /// The fraction of a tile that neighbouring tiles overlap (blended).
    pub overlap: f64,
}

impl Spatial {
    /// The tile in latent positions.
    pub fn latent_tile(&self) -> [usize; 2] {
        [self.tile[0] / self.factor, self.tile[1] / self.factor]
    }

    /// The same model taking every image whole (no tiles).
    pub fn whole(self) -> Self {
        let side = (usize::MAX / 4) / self.factor * self.factor;
        Self {
            tile: [side, side],
            ..self
        }
    }

    /// The same model with square tiles of `side` pixels (`0`: no tiling,
    /// [`Spatial::whole`]); `side` must be a multiple of the factor.
    pub fn with_tile(self, side: usize) -> std::result::Result<Self, String> {
        if side == 0 {
            return Ok(self.whole());
        }
        if !side.is_multiple_of(self.factor) {
            return Err(format!(
                "a tile of {side} pixels is not a multiple of the model's downsampling factor {}",
                self.factor
            ));
        }
        Ok(Self {
            tile: [side, side],
            ..self
        })
    }
}

/// A family config's learned scalar codebook of `K` levels, which tools
/// may resize (`aezoo rd-video` trains one model per `K`).
pub trait Codebook {
    /// `K`.
    fn levels(&self) -> usize;
    /// Sets `K`, and where the new levels start (`(lo, hi)`: spread evenly
    /// over it; `None`: the family's own default).
    fn set_levels(&mut self, levels: usize, init_range: Option<(f64, f64)>) -> Result<()>;
}

/// A model family: its serde config and how to build it.
pub trait Family: Autoencoder + Sized + 'static {
    /// The family's `model` section of `configs/<entry>.json`; unknown keys
    /// must be refused (`#[serde(deny_unknown_fields)]`).
    type Config: DeserializeOwned + Serialize + Clone + Send + Sync + 'static;

    /// The name used in config files (`"family": "vae-conv"`).
    const NAME: &'static str;

    /// One line for `aezoo list`: what it is and the paper it follows.
    const ABOUT: &'static str;

    /// Builds the model; parameter names are `vb.pp(..)` paths, which are also
    /// the safetensors keys.
    fn new(cfg: &Self::Config, vb: VarBuilder) -> Result<Self>;

    /// `(channels, height, width)` of the images the config expects.
    fn image_shape(cfg: &Self::Config) -> [usize; 3];

    /// The config's codebook, for families whose code is quantised to a
    /// learned set of levels (a capability; none by default).
    fn codebook(cfg: &mut Self::Config) -> Option<&mut dyn Codebook> {
        let _ = cfg;
        None
    }
}
