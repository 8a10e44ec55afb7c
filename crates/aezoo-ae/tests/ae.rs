//! aezoo-ae's tests: the linear autoencoder's shapes, its loss against a
//! hand computation, and a finite-difference check of the whole model.

use aezoo_ae::{Activation, LinearAe, LinearAeConfig, ReconLoss};
use aezoo_nn::gradcheck::{uniform_input, GradCheck};
use aezoo_nn::{Autoencoder, Batch, Family, ParamStore, Rng, StepCtx};
use candle_core::{DType, Device, Tensor};

fn cfg(activation: Activation, loss: ReconLoss) -> LinearAeConfig {
    LinearAeConfig {
        image: [1, 6, 5],
        latent: 4,
        activation,
        loss,
    }
}

fn build(c: &LinearAeConfig, dtype: DType) -> (LinearAe, ParamStore) {
    let store = ParamStore::init(3);
    let m = LinearAe::new(c, store.var_builder(dtype, &Device::Cpu)).unwrap();
    (m, store)
}

#[test]
fn shapes_and_parameter_names() {
    let (m, store) = build(&cfg(Activation::Relu, ReconLoss::Mse), DType::F32);
    let x = Tensor::rand(0f32, 1f32, (3, 1, 6, 5), &Device::Cpu).unwrap();
    assert_eq!(m.encode(&x).unwrap().dims(), &[3, 4]);
    let y = m.reconstruct(&x).unwrap();
    assert_eq!(y.dims(), &[3, 1, 6, 5]);
    let names: Vec<String> = store.tensors().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        ["decoder.bias", "decoder.weight", "encoder.bias", "encoder.weight"]
    );
    assert_eq!(store.num_params(), 30 * 4 + 4 + 4 * 30 + 30);
    assert_eq!(m.latent_shape(), vec![4]);
}

#[test]
fn loss_is_the_mean_squared_error_of_the_reconstruction() {
    let (m, _) = build(&cfg(Activation::None, ReconLoss::Mse), DType::F64);
    let x = uniform_input(&[2, 1, 6, 5], 0.0, 1.0, 1).unwrap();
    let out = m
        .step(
            &Batch::autoencode(x.clone()),
            &mut StepCtx {
                train: true,
                rng: &mut Rng::new(0),
            },
        )
        .unwrap();
    let want = (m.reconstruct(&x).unwrap() - &x)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let (a, b) = (out.loss.to_scalar::<f64>().unwrap(), want.to_scalar::<f64>().unwrap());
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    assert_eq!(out.terms[0].0, "mse");
}

#[test]
fn whole_model_gradient_check() {
    for (act, loss) in [
        (Activation::Relu, ReconLoss::Mse),
        (Activation::Sigmoid, ReconLoss::Bce),
        (Activation::None, ReconLoss::Mse),
    ] {
        let (m, _) = build(&cfg(act, loss), DType::F64);
        let x = uniform_input(&[2, 1, 6, 5], 0.05, 0.95, 2).unwrap();
        let f = |a: &[Tensor]| {
            let out = m.step(
                &Batch::autoencode(a[0].clone()),
                &mut StepCtx {
                    train: true,
                    rng: &mut Rng::new(0),
                },
            )?;
            Ok(out.loss)
        };
        if let Err(e) = GradCheck::default().check(f, &[x]) {
            panic!("{act:?}/{loss:?}: {e}");
        }
    }
}

#[test]
fn zero_sizes_are_refused() {
    let store = ParamStore::init(0);
    let c = LinearAeConfig {
        latent: 0,
        ..cfg(Activation::Relu, ReconLoss::Mse)
    };
    assert!(LinearAe::new(&c, store.var_builder(DType::F32, &Device::Cpu)).is_err());
}
