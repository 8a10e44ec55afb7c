//! Inference helpers shared by the CLI: latent interpolation, and single
//! tensors with metadata in safetensors files (latents, node embeddings).

use std::collections::HashMap;
use std::path::Path;

use aezoo_nn::params::write_atomic;
use aezoo_nn::Autoencoder;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{io_err, Result, TrainError};

/// Decodes `steps` evenly spaced points on the straight line between the
/// codes of `a` and `b` (`(1, c, h, w)` each), both ends included: for a VAE
/// the posterior means, for a deterministic autoencoder its codes.
pub fn interpolate(model: &dyn Autoencoder, a: &Tensor, b: &Tensor, steps: usize) -> Result<Tensor> {
    let (za, zb) = (model.encode(a)?, model.encode(b)?);
    let codes: Vec<Tensor> = (0..steps)
        .map(|i| {
            let t = i as f64 / (steps - 1).max(1) as f64;
            (za.affine(1.0 - t, 0.0)? + zb.affine(t, 0.0)?).map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    Ok(model.decode(&Tensor::cat(&codes, 0)?)?)
}

/// Writes one f32 tensor `name` with string metadata to a safetensors file
/// (atomically): the latents of `aezoo encode`, the node embeddings of
/// `aezoo encode-graph`.
pub fn save_tensor(name: &str, t: &Tensor, meta: &[(&str, String)], path: &Path) -> Result<()> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let bytes: Vec<u8> = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let other = |e: safetensors::SafeTensorError| TrainError::Other(format!("{}: {e}", path.display()));
    let view = TensorView::new(Dtype::F32, t.dims().to_vec(), &bytes).map_err(other)?;
    let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let out = safetensors::tensor::serialize([(name, view)], Some(meta)).map_err(other)?;
    write_atomic(path, &out)?;
    Ok(())
}

/// Reads the f32 tensor `name` and the metadata of a safetensors file; a
/// missing tensor, another dtype or a corrupt file is an error naming it.
pub fn load_tensor(name: &str, path: &Path) -> Result<(Tensor, HashMap<String, String>)> {
    let bad = |msg: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    aezoo_nn::params::check_file_size(path)?;
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let view = st.tensor(name).map_err(|_| bad(format!("no tensor `{name}`")))?;
    if view.dtype() != Dtype::F32 {
        return Err(bad(format!("`{name}` is {:?}, expected F32", view.dtype())));
    }
    let vals: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("`{name}` holds NaN or Inf (first at flat index {i})")));
    }
    let t = Tensor::from_vec(vals, view.shape(), &Device::Cpu)?;
    Ok((t, meta.metadata().clone().unwrap_or_default()))
}
