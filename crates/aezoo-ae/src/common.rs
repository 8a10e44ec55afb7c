//! Settings shared by the deterministic families: activations and the
//! reconstruction loss.

use aezoo_metrics::{bce, mse, Reduction};
use aezoo_nn::layers::Linear;
use aezoo_nn::{ops, Act};
use candle_core::Module;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// An activation, as config files name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The identity.
    None,
    #[default]
    Relu,
    Sigmoid,
    Silu,
}

impl Activation {
    /// The same activation as a fused layer epilogue, where there is one.
    pub fn fused(self) -> Option<Act> {
        match self {
            Activation::None => Some(Act::None),
            Activation::Relu => Some(Act::Relu),
            Activation::Sigmoid => Some(Act::Sigmoid),
            Activation::Silu => None,
        }
    }

    /// `act(layer(xs))`, fused where the activation allows.
    pub fn after(self, layer: &Linear, xs: &Tensor) -> Result<Tensor> {
        match self.fused() {
            Some(act) => layer.forward_act(xs, act),
            None => self.apply(&layer.forward(xs)?),
        }
    }

    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(xs.clone()),
            Activation::Relu => ops::relu(xs),
            Activation::Sigmoid => ops::sigmoid(xs),
            Activation::Silu => ops::silu(xs),
        }
    }
}

/// The reconstruction loss of a deterministic autoencoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// Mean squared error per pixel.
    #[default]
    Mse,
    /// Binary cross-entropy per pixel.
    Bce,
}

impl ReconLoss {
    /// `(name, mean loss)` of a reconstruction in [0, 1] against its target.
    pub fn compute(self, recon: &Tensor, target: &Tensor) -> Result<(&'static str, Tensor)> {
        Ok(match self {
            ReconLoss::Mse => ("mse", mse(recon, target, Reduction::Mean)?),
            ReconLoss::Bce => ("bce", bce(recon, target, Reduction::Mean)?),
        })
    }
}
