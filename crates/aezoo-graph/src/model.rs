//! GAE and VGAE of Kipf & Welling (2016), "Variational Graph Auto-Encoders":
//! a two-layer GCN encoder (Kipf & Welling 2017) and the inner-product decoder
//! `σ(Z Zᵀ)`.
//!
//! ```text
//! H  = ReLU(Â · X · W0)                 X: features (n, f), or I for GAE* / VGAE*
//! GAE   Z = Â · H · W1                  (n, latent)
//! VGAE  μ = Â · H · Wμ,  log σ = Â · H · Wσ,  Z = μ + ε·σ while training
//! loss  = recon(Z) [ + KL ],  KL = −(0.5/n) · mean_i Σ_d (1 + 2 log σ − μ² − σ²)
//! ```
//! As in the reference code: Glorot-uniform weights without biases, the
//! encoder's mean as the embedding at evaluation, the KL on the standard
//! deviation's log (not the variance's).

use aezoo_nn::{ops, Rng};
use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::Graph;
use crate::loss::{recon_loss, ReconTarget};
use crate::sparse::{Csr, SparseMat};

/// The encoder's inputs: the normalised training adjacency and the node features.
#[derive(Clone, Debug)]
pub struct GraphInput {
    pub adj: SparseMat,
    pub features: SparseMat,
}

impl GraphInput {
    /// `Â` of `edges` over the graph's nodes, and its features (the identity
    /// when `use_features` is false or the graph has none).
    pub fn new(g: &Graph, edges: &[(u32, u32)], use_features: bool) -> Self {
        let features = match (&g.features, use_features) {
            (Some(f), true) => Csr::from_features(f),
            _ => Csr::identity(g.num_nodes),
        };
        Self {
            adj: SparseMat::new(Csr::normalized_adjacency(g.num_nodes, edges)),
            features: SparseMat::new(features),
        }
    }

    pub fn num_nodes(&self) -> usize {
        self.adj.shape().0
    }

    /// Width of the feature matrix (the first layer's input size).
    pub fn in_dim(&self) -> usize {
        self.features.shape().1
    }
}

/// A training step's result: the loss and its named parts.
#[derive(Clone, Debug)]
pub struct GraphStep {
    pub loss: Tensor,
    pub terms: Vec<(&'static str, Tensor)>,
}

/// A graph autoencoder: node codes from a graph, and its training loss.
pub trait GraphAutoencoder: Send + Sync {
    /// Node embeddings `(n, latent)` (for VGAE the posterior mean).
    fn encode(&self, g: &GraphInput) -> Result<Tensor>;
    /// One full-batch forward pass with the family's loss.
    fn step(&self, g: &GraphInput, target: &ReconTarget, rng: &mut Rng, train: bool) -> Result<GraphStep>;
    fn latent_dim(&self) -> usize;
}

/// A graph autoencoder family: its serde config and how to build it.
pub trait GraphFamily: GraphAutoencoder + Sized + 'static {
    /// The `model` section of the entry config (unknown keys refused).
    type Config: DeserializeOwned + Serialize + Clone + Send + Sync + 'static;
    const NAME: &'static str;
    const ABOUT: &'static str;
    /// Builds the model for inputs of width `in_dim`.
    fn new(cfg: &Self::Config, in_dim: usize, vb: VarBuilder) -> Result<Self>;
    /// Whether the config reads node features (false: the identity, GAE*).
    fn uses_features(cfg: &Self::Config) -> bool;
}

/// A graph convolution `Â · X · W` (Kipf & Welling 2017), no bias.
#[derive(Clone, Debug)]
pub struct Gcn {
    weight: Tensor,
}

/// A GCN layer with Glorot-uniform weights `(in, out)`, as the reference code.
pub fn gcn(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Gcn> {
    let r = (6.0 / (in_dim + out_dim) as f64).sqrt();
    let weight = vb.get_with_hints((in_dim, out_dim), "weight", Init::Uniform { lo: -r, up: r })?;
    Ok(Gcn { weight })
}

impl Gcn {
    /// `Â · (xs · W)`, `xs` dense `(n, in)`.
    pub fn forward(&self, adj: &SparseMat, xs: &Tensor) -> Result<Tensor> {
        adj.matmul(&xs.matmul(&self.weight)?)
    }

    /// `Â · (X · W)`, `X` sparse `(n, in)`.
    pub fn forward_sparse(&self, adj: &SparseMat, xs: &SparseMat) -> Result<Tensor> {
        adj.matmul(&xs.matmul(&self.weight)?)
    }
}

fn default_hidden() -> usize {
    32
}
fn default_latent() -> usize {
    16
}
fn default_true() -> bool {
    true
}

/// The `model` section of a GAE / VGAE entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaeConfig {
    /// Width of the first GCN layer (32 in the paper).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Width of the embedding (16 in the paper).
    #[serde(default = "default_latent")]
    pub latent: usize,
    /// Read node features (false: the featureless GAE* / VGAE*).
    #[serde(default = "default_true")]
    pub features: bool,
}

/// The two-layer GCN encoder both families share: `H = ReLU(Â X W0)`, then
/// `μ = Â H Wμ` and, for VGAE, `log σ = Â H Wσ`.
struct GcnEncoder {
    hidden: Gcn,
    mean: Gcn,
    log_std: Option<Gcn>,
    latent: usize,
}

impl GcnEncoder {
    fn new(cfg: &GaeConfig, in_dim: usize, variational: bool, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden == 0 || cfg.latent == 0 || in_dim == 0 {
            candle_core::bail!(
                "model: hidden ({}), latent ({}) and the input width ({in_dim}) must be >= 1",
                cfg.hidden,
                cfg.latent
            )
        }
        let vb = vb.pp("encoder");
        Ok(Self {
            hidden: gcn(in_dim, cfg.hidden, vb.pp("hidden"))?,
            mean: gcn(cfg.hidden, cfg.latent, vb.pp("mean"))?,
            log_std: match variational {
                true => Some(gcn(cfg.hidden, cfg.latent, vb.pp("log_std"))?),
                false => None,
            },
            latent: cfg.latent,
        })
    }

    fn hidden(&self, g: &GraphInput) -> Result<Tensor> {
        ops::relu(&self.hidden.forward_sparse(&g.adj, &g.features)?)
    }

    fn mean(&self, g: &GraphInput) -> Result<Tensor> {
        self.mean.forward(&g.adj, &self.hidden(g)?)
    }

    /// `(μ, log σ)`; only for the variational encoder.
    fn posterior(&self, g: &GraphInput) -> Result<(Tensor, Tensor)> {
        let Some(log_std) = &self.log_std else {
            candle_core::bail!("posterior of a non-variational encoder")
        };
        let h = self.hidden(g)?;
        Ok((self.mean.forward(&g.adj, &h)?, log_std.forward(&g.adj, &h)?))
    }
}

/// The graph auto-encoder: `Z = GCN(Â, GCN(Â, X))`, trained to reconstruct `A + I`.
pub struct Gae {
    enc: GcnEncoder,
}

impl GraphAutoencoder for Gae {
    fn encode(&self, g: &GraphInput) -> Result<Tensor> {
        self.enc.mean(g)
    }

    fn step(&self, g: &GraphInput, target: &ReconTarget, _rng: &mut Rng, _train: bool) -> Result<GraphStep> {
        let z = self.encode(g)?;
        let recon = recon_loss(&z, target)?;
        Ok(GraphStep {
            loss: recon.clone(),
            terms: vec![("recon", recon)],
        })
    }

    fn latent_dim(&self) -> usize {
        self.enc.latent
    }
}

impl GraphFamily for Gae {
    type Config = GaeConfig;
    const NAME: &'static str = "gae";
    const ABOUT: &'static str =
        "graph auto-encoder: two-layer GCN encoder, inner-product decoder (Kipf & Welling 2016)";

    fn new(cfg: &GaeConfig, in_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            enc: GcnEncoder::new(cfg, in_dim, false, vb)?,
        })
    }

    fn uses_features(cfg: &GaeConfig) -> bool {
        cfg.features
    }
}

/// The variational graph auto-encoder: a Gaussian posterior per node,
/// reparameterised, with the KL to N(0, I).
pub struct Vgae {
    enc: GcnEncoder,
}

/// `−(0.5/n) · mean_i Σ_d (1 + 2 log σ − μ² − σ²)` (positive; the reference subtracts its negation).
pub fn vgae_kl(mu: &Tensor, log_std: &Tensor) -> Result<Tensor> {
    let (n, _) = mu.dims2()?;
    let inner = ((log_std.affine(2.0, 1.0)? - mu.sqr()?)? - log_std.affine(2.0, 0.0)?.exp()?)?;
    inner.sum(D::Minus1)?.mean_all()?.affine(-0.5 / n as f64, 0.0)
}

impl GraphAutoencoder for Vgae {
    fn encode(&self, g: &GraphInput) -> Result<Tensor> {
        self.enc.mean(g)
    }

    fn step(&self, g: &GraphInput, target: &ReconTarget, rng: &mut Rng, train: bool) -> Result<GraphStep> {
        let (mu, log_std) = self.enc.posterior(g)?;
        let z = if train {
            let eps = rng.randn(mu.shape(), mu.dtype(), mu.device())?;
            (&mu + (eps * log_std.exp()?)?)?
        } else {
            mu.clone()
        };
        let recon = recon_loss(&z, target)?;
        let kl = vgae_kl(&mu, &log_std)?;
        Ok(GraphStep {
            loss: (&recon + &kl)?,
            terms: vec![("recon", recon), ("kl", kl)],
        })
    }

    fn latent_dim(&self) -> usize {
        self.enc.latent
    }
}

impl GraphFamily for Vgae {
    type Config = GaeConfig;
    const NAME: &'static str = "vgae";
    const ABOUT: &'static str =
        "variational graph auto-encoder: GCN posterior per node, inner-product decoder (Kipf & Welling 2016)";

    fn new(cfg: &GaeConfig, in_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            enc: GcnEncoder::new(cfg, in_dim, true, vb)?,
        })
    }

    fn uses_features(cfg: &GaeConfig) -> bool {
        cfg.features
    }
}

/// Decoder logits `z_u · z_v` of node pairs, in f64 (σ of them is the
/// predicted edge probability; ranking metrics need only the logits).
pub fn edge_logits(z: &Tensor, pairs: &[(u32, u32)]) -> Result<Vec<f64>> {
    let (_, d) = z.dims2()?;
    let z: Vec<f64> = z.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
    Ok(pairs
        .iter()
        .map(|&(u, v)| {
            let (a, b) = (&z[u as usize * d..][..d], &z[v as usize * d..][..d]);
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        })
        .collect())
}
