//! aezoo-ae's tests: both families' shapes, parameter names and counts (equal
//! to their PyTorch twins'), their losses against hand computations, and a
//! finite-difference check of each whole model in every variant.

use aezoo_ae::{Activation, ConvAe, ConvAeConfig, ConvDecoder, MlpAe, MlpAeConfig, ReconLoss};
use aezoo_nn::gradcheck::{uniform_input, values_f64, GradCheck};
use aezoo_nn::{Autoencoder, Batch, Family, ParamStore, Rng, StepCtx};
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------- helpers

fn mlp(hidden: Vec<usize>, latent: usize, sparsity: f64, loss: ReconLoss) -> MlpAeConfig {
    MlpAeConfig {
        image: [1, 6, 5],
        hidden,
        latent,
        activation: Activation::Relu,
        code_activation: Activation::Relu,
        loss,
        sparsity,
    }
}

fn build<F: Family>(cfg: &F::Config, dtype: DType) -> (F, ParamStore) {
    let store = ParamStore::init(3);
    let m = F::new(cfg, store.var_builder(dtype, &Device::Cpu)).unwrap();
    (m, store)
}

fn names(store: &ParamStore) -> Vec<String> {
    store
        .tensors()
        .into_iter()
        .map(|(k, t)| format!("{k}{:?}", t.dims()))
        .collect()
}

fn step_loss(m: &dyn Autoencoder, x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(
        m.step(&Batch::autoencode(x.clone()), &mut StepCtx::train(&mut Rng::new(0)))?
            .loss,
    )
}

fn assert_model_grad(what: &str, m: &dyn Autoencoder, shape: &[usize]) {
    let x = uniform_input(shape, 0.05, 0.95, 2).unwrap();
    if let Err(e) = GradCheck::default().check(|a| step_loss(m, &a[0]), &[x]) {
        panic!("{what}: {e}");
    }
}

// ---------------------------------------------------------------- ae-mlp

#[test]
fn mlp_shapes_and_parameter_names() {
    let (m, store) = build::<MlpAe>(&mlp(vec![7], 4, 0.0, ReconLoss::Mse), DType::F32);
    let x = Tensor::zeros((3, 1, 6, 5), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.encode(&x).unwrap().dims(), &[3, 4]);
    assert_eq!(m.reconstruct(&x).unwrap().dims(), &[3, 1, 6, 5]);
    assert_eq!(
        names(&store),
        [
            "decoder.fc1.bias[7]",
            "decoder.fc1.weight[7, 4]",
            "decoder.fc2.bias[30]",
            "decoder.fc2.weight[30, 7]",
            "encoder.fc1.bias[7]",
            "encoder.fc1.weight[7, 30]",
            "encoder.fc2.bias[4]",
            "encoder.fc2.weight[4, 7]",
        ]
    );
    // The single-layer (ae-linear) shape: 784 → 32 → 784 = 50,992 parameters.
    let lin = MlpAeConfig {
        image: [1, 28, 28],
        ..mlp(vec![], 32, 0.0, ReconLoss::Mse)
    };
    assert_eq!(build::<MlpAe>(&lin, DType::F32).1.num_params(), 50_992);
}

#[test]
fn mlp_loss_is_mse_plus_l1_of_the_code() {
    let (m, _) = build::<MlpAe>(&mlp(vec![], 4, 0.01, ReconLoss::Mse), DType::F64);
    let x = uniform_input(&[2, 1, 6, 5], 0.0, 1.0, 1).unwrap();
    let out = m
        .step(&Batch::autoencode(x.clone()), &mut StepCtx::train(&mut Rng::new(0)))
        .unwrap();
    let recon = m.reconstruct(&x).unwrap();
    let mse = (recon - &x)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let l1 = m
        .encode(&x)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        / 2.0;
    let got = out.loss.to_scalar::<f64>().unwrap();
    assert!((got - (mse + 0.01 * l1)).abs() < 1e-12, "{got} vs {}", mse + 0.01 * l1);
    let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["mse", "l1"]);
}

#[test]
fn mlp_whole_model_gradient_check() {
    for (hidden, sparsity, loss) in [
        (vec![], 0.0, ReconLoss::Mse),
        (vec![6], 0.05, ReconLoss::Mse),
        (vec![6, 5], 0.0, ReconLoss::Bce),
    ] {
        let what = format!("ae-mlp hidden {hidden:?} sparsity {sparsity} {loss:?}");
        let (m, _) = build::<MlpAe>(&mlp(hidden, 4, sparsity, loss), DType::F64);
        assert_model_grad(&what, &m, &[2, 1, 6, 5]);
    }
}

#[test]
fn mlp_bad_configs_are_refused() {
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    assert!(MlpAe::new(&mlp(vec![], 0, 0.0, ReconLoss::Mse), vb.clone()).is_err());
    assert!(MlpAe::new(&mlp(vec![0], 3, 0.0, ReconLoss::Mse), vb.clone()).is_err());
    assert!(MlpAe::new(&mlp(vec![], 3, -1.0, ReconLoss::Mse), vb).is_err());
}

// ---------------------------------------------------------------- ae-conv

fn conv(image: [usize; 3], channels: Vec<usize>, decoder: ConvDecoder, pool: bool) -> ConvAeConfig {
    ConvAeConfig {
        image,
        channels,
        decoder,
        pool,
        head: false,
        loss: ReconLoss::Mse,
    }
}

/// The Keras-tutorial layout: a last full-resolution conv after the stages.
fn with_head(cfg: ConvAeConfig) -> ConvAeConfig {
    ConvAeConfig { head: true, ..cfg }
}

#[test]
fn conv_architecture_matches_the_pytorch_twin() {
    // shared/bench/pytorch_ref.py's ConvAe: 320 + 18,496 + 8,224 + 129 = 27,169 parameters.
    let (m, store) = build::<ConvAe>(
        &conv([1, 28, 28], vec![32, 64], ConvDecoder::Transposed, true),
        DType::F32,
    );
    assert_eq!(store.num_params(), 27_169);
    assert_eq!(
        names(&store),
        [
            "decoder.deconv1.bias[32]",
            "decoder.deconv1.weight[64, 32, 2, 2]",
            "decoder.deconv2.bias[1]",
            "decoder.deconv2.weight[32, 1, 2, 2]",
            "encoder.conv1.bias[32]",
            "encoder.conv1.weight[32, 1, 3, 3]",
            "encoder.conv2.bias[64]",
            "encoder.conv2.weight[64, 32, 3, 3]",
        ]
    );
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.encode(&x).unwrap().dims(), &[2, 64, 7, 7]);
    assert_eq!(m.latent_shape(), vec![64, 7, 7]);
    assert_eq!(m.reconstruct(&x).unwrap().dims(), &[2, 1, 28, 28]);
    // The upsampling decoder and the unpooled denoiser keep the image shape too.
    for cfg in [
        conv([1, 28, 28], vec![32, 32], ConvDecoder::Upsample, true),
        conv([1, 28, 28], vec![8, 8], ConvDecoder::Transposed, false),
        with_head(conv([1, 28, 28], vec![32, 32], ConvDecoder::Upsample, true)),
    ] {
        let (m, _) = build::<ConvAe>(&cfg, DType::F32);
        assert_eq!(m.reconstruct(&x).unwrap().dims(), &[2, 1, 28, 28], "{cfg:?}");
    }
}

#[test]
fn conv_whole_model_gradient_check() {
    for cfg in [
        conv([1, 8, 8], vec![3, 4], ConvDecoder::Transposed, true),
        conv([1, 8, 8], vec![3, 2], ConvDecoder::Upsample, true),
        conv([2, 6, 6], vec![3], ConvDecoder::Transposed, false),
        with_head(conv([1, 8, 8], vec![3, 2], ConvDecoder::Upsample, true)),
        with_head(conv([2, 4, 4], vec![2], ConvDecoder::Transposed, true)),
    ] {
        let (m, _) = build::<ConvAe>(&cfg, DType::F64);
        let [c, h, w] = cfg.image;
        assert_model_grad(&format!("{cfg:?}"), &m, &[2, c, h, w]);
    }
}

#[test]
fn conv_bad_configs_are_refused() {
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let e = ConvAe::new(
        &conv([1, 30, 30], vec![8, 8], ConvDecoder::Transposed, true),
        vb.clone(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("divisible"), "{e}");
    assert!(ConvAe::new(&conv([1, 28, 28], vec![], ConvDecoder::Transposed, true), vb).is_err());
}

#[test]
fn mlp_reconstruct_in_one_chain_is_decode_of_encode() {
    // One fused stack for reconstruct, layer by layer for encode / decode:
    // the same bits, with hidden layers and without, in f32 and f64.
    for hidden in [vec![12, 9], vec![]] {
        for dtype in [DType::F32, DType::F64] {
            let (m, _) = build::<MlpAe>(&mlp(hidden.clone(), 4, 0.0, ReconLoss::Mse), dtype);
            let x = uniform_input(&[7, 1, 6, 5], 0.0, 1.0, 11)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = m.reconstruct(&x).unwrap();
            let want = m.decode(&m.encode(&x).unwrap()).unwrap();
            assert_eq!(got.dims(), [7, 1, 6, 5]);
            let v = |t: &Tensor| values_f64(t).unwrap();
            assert_eq!(v(&got), v(&want), "hidden {hidden:?} {dtype:?}");
        }
    }
}
