//! The layer grammar: parsing, shape inference, `Sequential` against the
//! layers applied by hand, and gradient checks of every token.

use super::*;
use crate::fused::plain_up_conv;
use aezoo_nn::spec::{parse_list, FeatShape, LayerSpec, Sequential};
use aezoo_nn::Act;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The FlexVAE "basic" lists (its README), as in `configs/vae-flex-sd.json`.
const ENCODER: &[&str] = &[
    "C2d_3_128_3_1_1",
    "2*VAERB_128_128",
    "C2d_128_128_3_4_0",
    "VAERB_128_256",
    "VAERB_256_256",
    "C2d_256_256_3_4_0",
    "3*VAERB_256_256",
    "VAEA_256",
    "VAERB_256_256",
    "GN_32_256",
    "SiLU",
    "C2d_256_8_3_1_1",
    "C2d_8_8_1_1_0",
];
const DECODER: &[&str] = &[
    "C2d_4_4_1_1_0",
    "C2d_4_512_3_1_1",
    "VAERB_512_512",
    "VAEA_512",
    "4*VAERB_512_512",
    "UpS_4",
    "C2d_512_512_3_1_1",
    "VAERB_512_256",
    "2*VAERB_256_256",
    "UpS_4",
    "C2d_256_256_3_1_1",
    "VAERB_256_128",
    "2*VAERB_128_128",
    "GN_32_128",
    "SiLU",
    "C2d_128_3_3_1_1",
];

/// The error of building `items` from `input`, as text.
fn build_err(items: &[&str], input: FeatShape) -> String {
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    Sequential::new("encoder", &strings(items), input, vb)
        .unwrap_err()
        .to_string()
}

fn map(c: usize, h: usize, w: usize) -> FeatShape {
    FeatShape::Map { c, h, w }
}

#[test]
fn upsampling_into_a_conv_in_a_list_equals_the_layers_one_at_a_time() {
    // `UpS_2` then a conv (with and without its activation) runs in
    // sub-pixel form (`Sequential::forward`): against upsample, conv and
    // activation applied by hand with the list's own parameters.
    for (items, act) in [
        (&["UpS_2", "C2d_2_3_3_1_1", "ReLU"][..], Act::Relu),
        (&["UpS_2", "C2d_2_3_3_1_1"][..], Act::None),
        (&["UpS_2", "C2d_2_3_3_1_1", "Sigm", "UpS_2"][..], Act::Sigmoid),
    ] {
        let store = ParamStore::init(3);
        let seq = Sequential::new(
            "decoder",
            &strings(items),
            map(2, 5, 4),
            store.var_builder(DType::F64, &Device::Cpu),
        )
        .unwrap();
        let x = u(&[2, 2, 5, 4], 332);
        let vars: std::collections::BTreeMap<String, Tensor> = store.tensors().into_iter().collect();
        let mut want = plain_up_conv(&x, 2, &vars["1.weight"], &vars["1.bias"], 1, act);
        if items.len() == 4 {
            want = ops::upsample_nearest2d(&want, 2, 2).unwrap();
        }
        let got = seq.forward(&x).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-12, "{items:?}: differs");
    }
}

#[test]
fn gdn_layers_in_lists() {
    // A Ballé-style analysis/synthesis pair: GDN keeps the shape, names
    // its parameters `beta` / `gamma`, and a channel mismatch is an error.
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let enc = Sequential::new(
        "encoder",
        &strings(&["C2d_3_8_5_2_2", "GDN_8", "C2d_8_4_5_2_2"]),
        map(3, 16, 16),
        vb.pp("encoder"),
    )
    .unwrap();
    let dec = Sequential::new(
        "decoder",
        &strings(&["CT2d_4_8_5_2_2_1", "IGDN_8", "CT2d_8_3_5_2_2_1"]),
        enc.output_shape(),
        vb.pp("decoder"),
    )
    .unwrap();
    assert_eq!(dec.output_shape(), map(3, 16, 16));
    let x = Tensor::rand(0f32, 1f32, (2, 3, 16, 16), &Device::Cpu).unwrap();
    assert_eq!(dec.forward(&enc.forward(&x).unwrap()).unwrap().dims(), &[2, 3, 16, 16]);
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    for n in ["encoder.1.beta", "encoder.1.gamma", "decoder.1.beta", "decoder.1.gamma"] {
        assert!(names.iter().any(|m| m == n), "{n} not in {names:?}");
    }
    let e = build_err(&["C2d_3_8_3_1_1", "GDN_4"], map(3, 8, 8));
    assert!(e.contains("encoder[1]") && e.contains("GDN_4"), "{e}");
    let e = build_err(&["GDN_0"], map(3, 8, 8));
    assert!(e.contains("channels must be >= 1"), "{e}");
}

#[test]
fn twenty_malformed_layer_lists_each_name_the_fault() {
    let m = map(3, 32, 32);
    let cases: [(&[&str], &[&str]); 20] = [
        (
            &["C2d_3_8_3_1_1", "Conv_8_8"],
            &["encoder[1]", "`Conv_8_8`", "unknown layer `Conv`", "C2d"],
        ),
        (&["C2d_3_x_3"], &["encoder[0]", "argument 2 `x`", "C2d_in_out_kernel"]),
        (&["C2d_3_8"], &["takes 3 to 5 arguments, got 2"]),
        (&["C2d_3_8_3_1_1_7"], &["takes 3 to 5 arguments, got 6"]),
        (&["C2d_3_8_0"], &["kernel must be >= 1"]),
        (&["C2d_3_8_3_0_1"], &["stride must be >= 1"]),
        (
            &["C2d_3_32_3_1_1", "VAERB_64_64"],
            &["encoder[1]", "`VAERB_64_64`", "expects 64 input channels", "gives 32"],
        ),
        (
            &["C2d_3_48_3_1_1", "VAERB_48_48"],
            &["encoder[1]", "GroupNorm(32) needs a multiple of 32"],
        ),
        (
            &["C2d_3_32_3_1_1", "VAEA_64"],
            &["encoder[1]", "expects 64 input channels"],
        ),
        (
            &["C2d_3_32_3_1_1", "GN_5_32"],
            &["32 channels cannot be split into 5 groups"],
        ),
        (&["0*SiLU"], &["repeat count 0"]),
        (&["x*SiLU"], &["repeat count `x`"]),
        (&["2*"], &["empty layer string"]),
        (&["SiLU_3"], &["`SiLU_3`", "takes 0 arguments, got 1"]),
        (
            &["C2d_3_8_3_1_1", "MaxP_64"],
            &["encoder[1]", "a 64×64 pool does not fit a 32×32 input"],
        ),
        (
            &["C2d_3_8_33_1_0"],
            &["kernel 33 with padding 0 does not fit a 32×32 input"],
        ),
        (&["Lin_10_4"], &["needs a flat vector", "add `Flat` before it"]),
        (
            &["Flat", "Lin_100_4"],
            &["encoder[1]", "expects 100 inputs", "gives 3072"],
        ),
        (&["Flat", "Unflat_3_16_16"], &["3·16·16 = 768 is not the 3072 inputs"]),
        (
            &["CT2d_3_8_3_2_1_2"],
            &["output padding 2 must be smaller than the stride 2"],
        ),
    ];
    for (items, needles) in cases {
        let e = build_err(items, m);
        assert!(!e.contains('\n'), "one line: {e}");
        for n in needles {
            assert!(e.contains(n), "{items:?}: `{n}` not in: {e}");
        }
    }
    let e = build_err(&[], m);
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn repeats_expand_and_shapes_follow_the_flexvae_basic_lists() {
    let enc = parse_list("encoder", &strings(ENCODER)).unwrap();
    assert_eq!(enc.specs.len(), 16, "13 strings, 2* and 3* expanded");
    assert_eq!(enc.specs[1], LayerSpec::ResBlock { cin: 128, cout: 128 });
    assert_eq!(enc.specs[2], enc.specs[1]);
    let shapes = enc.infer_shapes(map(3, 64, 64)).unwrap();
    assert_eq!(*shapes.last().unwrap(), map(8, 4, 4), "÷16, 2 × 4 latent channels");
    let dec = parse_list("decoder", &strings(DECODER)).unwrap();
    assert_eq!(*dec.infer_shapes(map(4, 4, 4)).unwrap().last().unwrap(), map(3, 64, 64));
    // A mismatch after a repeat names the string as written.
    let mut bad = strings(ENCODER);
    bad[6] = "3*VAERB_128_128".into();
    let e = parse_list("encoder", &bad)
        .unwrap()
        .infer_shapes(map(3, 64, 64))
        .unwrap_err();
    assert_eq!((e.index, e.item.as_str()), (6, "3*VAERB_128_128"));
}

#[test]
fn flexvae_basic_lists_have_the_reference_parameter_count() {
    // python3 scripts/pins/flexvae_ref.py: encoder 8440272, decoder 32965399
    for (items, input, want) in [
        (ENCODER, map(3, 64, 64), 8_440_272),
        (DECODER, map(4, 4, 4), 32_965_399),
    ] {
        let store = ParamStore::init(0);
        Sequential::new("x", &strings(items), input, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(store.num_params(), want);
    }
}

/// Sets every parameter by name as the reference script does:
/// sin(0.1·i + 0.7·len(name))·0.2.
fn fill_by_name(store: &ParamStore) {
    for (name, var) in store.vars() {
        let n = var.elem_count();
        let v: Vec<f64> = (0..n)
            .map(|i| (0.1 * i as f64 + 0.7 * name.len() as f64).sin() * 0.2)
            .collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn pinned_input(c: usize, h: usize, w: usize) -> Tensor {
    let v: Vec<f64> = (0..c * h * w).map(|i| (0.05 * i as f64).cos()).collect();
    Tensor::from_vec(v, (1, c, h, w), &Device::Cpu).unwrap()
}

fn assert_row(t: &Tensor, c: usize, y: usize, want: &[f64]) {
    let got: Vec<f64> = t.get(0).unwrap().get(c).unwrap().get(y).unwrap().to_vec1().unwrap();
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
    }
}

#[test]
fn residual_and_attention_blocks_match_pytorch() {
    // python3 scripts/pins/flexvae_ref.py (torch, float64)
    let store = ParamStore::init(0);
    let rb = aezoo_nn::spec::res_block(32, 64, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    fill_by_name(&store);
    let y = rb.forward(&pinned_input(32, 3, 4)).unwrap();
    assert_row(
        &y,
        5,
        1,
        &[
            2.348445724265675e-01,
            1.850484150454773e-01,
            2.016710623941815e-01,
            2.823470327116546e-01,
        ],
    );
    let store = ParamStore::init(0);
    let ab = aezoo_nn::spec::attention_block(32, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    fill_by_name(&store);
    let y = ab.forward(&pinned_input(32, 3, 4)).unwrap();
    assert_row(
        &y,
        7,
        2,
        &[
            2.095143291862463e-01,
            2.593170585686813e-01,
            3.092752814969235e-01,
            3.592641295307757e-01,
        ],
    );
}

#[test]
fn every_grammar_block_gradient_checks() {
    let store = ParamStore::init(3);
    let vb = store.var_builder(DType::F64, &Device::Cpu);
    let rb = aezoo_nn::spec::res_block(32, 64, vb.pp("rb")).unwrap();
    assert_grad("VAERB_32_64", |a| rb.forward(&a[0]), &[u(&[2, 32, 3, 3], 300)]);
    let same = aezoo_nn::spec::res_block(32, 32, vb.pp("rb2")).unwrap();
    assert_grad("VAERB_32_32", |a| same.forward(&a[0]), &[u(&[1, 32, 2, 3], 301)]);
    let ab = aezoo_nn::spec::attention_block(32, vb.pp("ab")).unwrap();
    assert_grad("VAEA_32", |a| ab.forward(&a[0]), &[u(&[2, 32, 2, 3], 302)]);
    // Every other token, in one list: conv, transposed conv, pool, upsampling,
    // norm, activations, flatten, linear, unflatten.
    let items = strings(&[
        "C2d_2_4_3_1_1",
        "GN_2_4",
        "SiLU",
        "MaxP_2",
        "CT2d_4_3_3_2_1_1",
        "ReLU",
        "UpS_2",
        "Flat",
        "Lin_192_12",
        "Sigm",
        "Unflat_3_2_2",
    ]);
    let seq = Sequential::new("list", &items, map(2, 4, 4), vb.pp("seq")).unwrap();
    assert_eq!(seq.output_shape(), map(3, 2, 2));
    assert_grad("every token", |a| seq.forward(&a[0]), &[d(&[2, 2, 4, 4], 303)]);
}
