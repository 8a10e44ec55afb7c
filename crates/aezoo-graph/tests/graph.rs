//! aezoo-graph: data parsing and its errors, the bundled data sets, the edge
//! split, the sparse operator, the GAE loss and KL pinned to the reference
//! code (TensorFlow), and gradient checks of every op and both models.

use aezoo_graph::data::{self, parse_edges, parse_features};
use aezoo_graph::loss::{recon_loss, recon_loss_composite};
use aezoo_graph::model::{edge_logits, gcn, vgae_kl};
use aezoo_graph::{
    Csr, EdgeSplit, Gae, GaeConfig, Graph, GraphAutoencoder, GraphFamily, GraphInput, ReconTarget, SparseMat, Vgae,
};
use aezoo_nn::gradcheck::{self, uniform_input};
use aezoo_nn::{ParamStore, Rng};
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------- helpers

const N: usize = 7;
const EDGES: [(u32, u32); 8] = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (1, 6)];

fn small_graph() -> Graph {
    Graph::new("t", N, EDGES.to_vec(), None).unwrap()
}

/// The fixed codes of `scripts/pins/graph_ref.py`.
fn pinned(f: impl Fn(f64, f64) -> f64) -> Tensor {
    let v: Vec<f64> = (0..N)
        .flat_map(|i| (0..3).map(move |k| (i, k)))
        .map(|(i, k)| f(i as f64, k as f64))
        .collect();
    Tensor::from_vec(v, (N, 3), &Device::Cpu).unwrap()
}

fn pinned_z() -> Tensor {
    pinned(|i, k| (1.3 * i + 0.7 * k).sin() * 1.5)
}

fn row(t: &Tensor, i: usize) -> Vec<f64> {
    t.get(i).unwrap().to_vec1().unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "got {got:?}\nwant {want:?}");
    }
}

/// max |a − b| over all elements (f32 tensors).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn parse_err_edges(text: &str) -> String {
    parse_edges(text, "g.edges.txt").unwrap_err().to_string()
}

fn f64_params(seed: u64) -> ParamStore {
    ParamStore::init(seed)
}

// ---------------------------------------------------------------- data

#[test]
fn bundled_graphs_have_the_published_sizes() {
    for (name, nodes, edges, feats) in [("cora", 2708, 5278, 1433), ("citeseer", 3327, 4552, 3703)] {
        let g = data::load(name, &[]).unwrap();
        assert_eq!(g.num_nodes, nodes, "{name}");
        assert_eq!(g.edges.len(), edges, "{name}");
        assert_eq!(g.repeated_edges, 0, "{name}");
        let f = g.features.as_ref().unwrap();
        assert_eq!((f.rows(), f.dim), (nodes, feats), "{name}");
        assert!(g.edges.iter().all(|&(u, v)| u < v));
    }
    // Citeseer has nodes without features (empty lines): kept as empty rows.
    let c = data::load("citeseer", &[]).unwrap();
    let f = c.features.unwrap();
    assert!((0..f.rows()).any(|i| f.row(i).is_empty()));
    assert_eq!(f.row(0)[0], 184);
}

#[test]
fn malformed_edge_lists_are_errors_naming_line_and_token() {
    let e = parse_err_edges("0 1\n1 x\n");
    assert!(e.contains("g.edges.txt:2") && e.contains("bad node id `x`"), "{e}");
    let e = parse_err_edges("0 1\n-3 2\n");
    assert!(e.contains(":2") && e.contains("`-3`"), "{e}");
    let e = parse_err_edges("0 1\n4 4\n");
    assert!(e.contains(":2") && e.contains("self-loop"), "{e}");
    let e = parse_err_edges("# g: 5 nodes\n0 1\n1 5\n");
    assert!(
        e.contains(":3") && e.contains("out of range") && e.contains("5 nodes"),
        "{e}"
    );
    let e = parse_err_edges("0 1 2\n");
    assert!(e.contains(":1") && e.contains("two node ids"), "{e}");
    let e = parse_features("# g: 2 nodes, 4 binary features\n0 3\n1 9\n", "g.features.txt")
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.features.txt:3") && e.contains("index 9"), "{e}");
    let e = parse_features("# g: 3 nodes, 4 features\n0 3\n1\n", "g.features.txt")
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 nodes") && e.contains("2 feature lines"), "{e}");
}

#[test]
fn node_counts_beyond_the_budget_and_odd_headers_are_clear_errors() {
    // Declared counts: zero, and one past the budget, both at their line.
    let e = parse_err_edges("# g: 0 nodes\n0 1\n");
    assert!(
        e.contains("g.edges.txt:1") && e.contains("0 nodes") && !e.contains("18446744073709551615"),
        "{e}"
    );
    let e = parse_err_edges("# g: 1000000000000 nodes\n0 1\n");
    assert!(
        e.contains(":1") && e.contains("1000000000000 nodes") && e.contains("limits"),
        "{e}"
    );
    let e = parse_features("# g: 2 nodes, 99999999999 features\n0\n1\n", "g.features.txt")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("g.features.txt:1") && e.contains("features") && e.contains("limits"),
        "{e}"
    );
    // Without a header the count is the largest id + 1: refused before use.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("far.edges.txt"), "0 1\n1 20000000\n").unwrap();
    let e = data::load("far", &[dir.path().to_path_buf()]).unwrap_err().to_string();
    assert!(
        e.contains("far.edges.txt") && e.contains("20000001 nodes") && e.contains("limit"),
        "{e}"
    );
    // A UTF-8 byte-order mark is not part of line 1.
    let (edges, declared) = parse_edges("\u{feff}# g: 3 nodes\n0 1\n1 2\n", "g.edges.txt").unwrap();
    assert_eq!((edges, declared), (vec![(0, 1), (1, 2)], Some(3)));
    // Too few edges to hold out validation and test edges: said before any
    // training, naming the file.
    std::fs::write(dir.path().join("tiny.edges.txt"), "0 1\n1 2\n2 3\n").unwrap();
    let g = data::load("tiny", &[dir.path().to_path_buf()]).unwrap();
    let e = EdgeSplit::check(&g).unwrap_err().to_string();
    assert!(
        e.contains("tiny.edges.txt") && e.contains("3 edges") && e.contains("at least 20"),
        "{e}"
    );
    assert!(EdgeSplit::check(&data::bundled("cora").unwrap().unwrap()).is_ok());
}

#[test]
fn a_users_graph_loads_from_a_folder_with_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.edges.txt"),
        "# both directions and repeats count once\n0 1\n1 0\n1 2\n1 2\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("mine.features.txt"), "0\n\n1 0\n3\n").unwrap();
    let g = data::load("mine", &[dir.path().to_path_buf()]).unwrap();
    assert_eq!(
        (g.num_nodes, g.edges.clone(), g.repeated_edges),
        (4, vec![(0, 1), (1, 2)], 2)
    );
    assert_eq!(g.features.as_ref().unwrap().dim, 4);
    assert!(g.source.ends_with("mine.edges.txt"));

    // An edge beyond the feature rows: the file is named.
    std::fs::write(dir.path().join("bad.edges.txt"), "0 1\n1 7\n").unwrap();
    std::fs::write(dir.path().join("bad.features.txt"), "0\n1\n").unwrap();
    let e = data::load("bad", &[dir.path().to_path_buf()]).unwrap_err().to_string();
    assert!(e.contains("bad.edges.txt") && e.contains("out of range 0..2"), "{e}");

    let e = data::load("nowhere", &[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no graph named `nowhere`") && e.contains("cora and citeseer"),
        "{e}"
    );
}

// ---------------------------------------------------------------- split

#[test]
fn the_edge_split_is_seeded_disjoint_and_sized_as_the_paper() {
    let g = data::load("cora", &[]).unwrap();
    let s = EdgeSplit::new(&g, 3);
    assert_eq!((s.test.len(), s.val.len()), (527, 263));
    assert_eq!(s.train.len(), 5278 - 527 - 263);
    assert_eq!((s.test_neg.len(), s.val_neg.len()), (527, 263));
    let mut all: Vec<_> = s.train.iter().chain(&s.val).chain(&s.test).copied().collect();
    all.sort_unstable();
    assert_eq!(all, g.edges, "train, val and test partition the edges");
    let edges: std::collections::HashSet<_> = g.edges.iter().copied().collect();
    let mut neg: Vec<_> = s.val_neg.iter().chain(&s.test_neg).copied().collect();
    assert!(neg.iter().all(|&(u, v)| u < v && !edges.contains(&(u, v))));
    neg.sort_unstable();
    neg.dedup();
    assert_eq!(neg.len(), 527 + 263, "no repeated non-edge");
    assert_eq!(EdgeSplit::new(&g, 3), s, "same seed, same split");
    assert_ne!(EdgeSplit::new(&g, 4).test, s.test);
}

// ---------------------------------------------------------------- sparse operator

#[test]
fn normalized_adjacency_matches_the_reference_preprocessing() {
    let a = Csr::normalized_adjacency(N, &EDGES);
    // python3 scripts/pins/graph_ref.py: adj_norm row 2
    let want = [
        2.886751345948129e-01,
        2.500000000000000e-01,
        2.500000000000000e-01,
        2.886751345948129e-01,
        0.0,
        0.0,
        0.0,
    ];
    let dense = a.to_dense(DType::F64, &Device::Cpu).unwrap();
    assert_close(&row(&dense, 2), &want, 1e-15);
    assert_eq!(a.transpose(), a, "symmetric");
}

#[test]
fn sparse_matmul_matches_dense_and_has_a_correct_gradient() {
    let a = SparseMat::new(Csr::normalized_adjacency(N, &EDGES));
    let xs = uniform_input(&[N, 4], -1.0, 1.0, 1).unwrap();
    let dense = a.csr().to_dense(DType::F64, &Device::Cpu).unwrap().matmul(&xs).unwrap();
    let diff = (a.matmul(&xs).unwrap() - dense)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() < 1e-14);
    // A non-square, non-symmetric operator: the backward must use Aᵀ.
    let r = SparseMat::new(Csr::from_triplets(
        3,
        N,
        vec![(0, 1, 2.0), (0, 6, -1.0), (2, 3, 0.5), (2, 0, 1.5)],
    ));
    let xs = uniform_input(&[N, 2], -1.0, 1.0, 2).unwrap();
    gradcheck::check(|v| r.matmul(&v[0]), &[xs]).unwrap();
}

// ---------------------------------------------------------------- loss

#[test]
fn recon_loss_and_kl_match_the_reference_code() {
    // python3 scripts/pins/graph_ref.py (TensorFlow, tkipf/gae optimizer.py)
    let t = ReconTarget::new(N, &EDGES);
    assert!((t.pos_weight - 2.0625).abs() < 1e-15);
    assert!((t.norm - 7.424242424242424e-01).abs() < 1e-15);
    let z = candle_core::Var::from_tensor(&pinned_z()).unwrap();
    for fused in [true, false] {
        let loss = if fused {
            recon_loss(z.as_tensor(), &t).unwrap()
        } else {
            recon_loss_composite(z.as_tensor(), &t).unwrap()
        };
        let v = loss.to_scalar::<f64>().unwrap();
        assert!((v - 6.048971307996031e-01).abs() < 1e-13, "fused {fused}: {v}");
        let g = loss.backward().unwrap();
        let dz = g.get(z.as_tensor()).unwrap();
        assert_close(
            &row(dz, 3),
            &[2.723939119768978e-03, 1.367359731825676e-02, 1.819234904211667e-02],
            1e-14,
        );
    }
    let ls = candle_core::Var::from_tensor(&pinned(|i, k| (0.9 * i - 0.4 * k).cos() * 0.3)).unwrap();
    let kl = vgae_kl(&pinned_z(), ls.as_tensor()).unwrap();
    assert!((kl.to_scalar::<f64>().unwrap() - 2.657624114020331e-01).abs() < 1e-14);
    let g = kl.backward().unwrap();
    assert_close(
        &row(g.get(ls.as_tensor()).unwrap(), 4),
        &[-8.492188333922393e-03, -9.196460580147208e-03, -8.812843172068031e-03],
        1e-15,
    );
}

#[test]
fn fused_recon_loss_gradient_checks_and_agrees_with_the_composite_on_a_real_graph() {
    let t = ReconTarget::new(N, &EDGES);
    gradcheck::check(
        |v| recon_loss(&v[0], &t),
        &[uniform_input(&[N, 3], -1.5, 1.5, 4).unwrap()],
    )
    .unwrap();
    gradcheck::check(
        |v| recon_loss_composite(&v[0], &t),
        &[uniform_input(&[N, 3], -1.5, 1.5, 5).unwrap()],
    )
    .unwrap();

    // More rows than one block (256), f32 as in training.
    let g = data::load("cora", &[]).unwrap();
    let split = EdgeSplit::new(&g, 0);
    let t = ReconTarget::new(g.num_nodes, &split.train);
    let z = candle_core::Var::from_tensor(
        &uniform_input(&[g.num_nodes, 16], -0.5, 0.5, 6)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    )
    .unwrap();
    let fused = recon_loss(z.as_tensor(), &t).unwrap();
    let comp = recon_loss_composite(z.as_tensor(), &t).unwrap();
    let (a, b) = (fused.to_scalar::<f32>().unwrap(), comp.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
    let ga = fused.backward().unwrap().remove(z.as_tensor()).unwrap();
    let gb = comp.backward().unwrap().remove(z.as_tensor()).unwrap();
    let scale = gb.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = max_abs_diff(&ga, &gb);
    assert!(diff < 1e-4 * scale, "{diff} vs {scale}");
}

// ---------------------------------------------------------------- layers and models

#[test]
fn gcn_layer_gradient_checks() {
    let params = f64_params(0);
    let layer = gcn(5, 4, params.var_builder(DType::F64, &Device::Cpu)).unwrap();
    let a = SparseMat::new(Csr::normalized_adjacency(N, &EDGES));
    gradcheck::check(
        |v| layer.forward(&a, &v[0]),
        &[uniform_input(&[N, 5], -1.0, 1.0, 7).unwrap()],
    )
    .unwrap();
    // Glorot-uniform: |w| ≤ sqrt(6 / (in + out)).
    let w = params.tensors()[0]
        .1
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(w <= (6.0f64 / 9.0).sqrt() && w > 0.3);
}

/// Checks d loss / d every parameter of a whole model by finite differences,
/// through the written-out loss (whose equality with the model's own `step`
/// is tested below); the sampling noise is re-drawn from one seed each call.
fn check_model<F: GraphFamily<Config = GaeConfig>>(features: bool) {
    let mut g = small_graph();
    g.features = Some(parse_features("0 2\n1\n\n3 4\n0\n2 4\n1 3\n", "f").unwrap());
    let input = GraphInput::new(&g, &EDGES[..6], features);
    let target = ReconTarget::new(N, &EDGES[..6]);
    let cfg = GaeConfig {
        hidden: 4,
        latent: 3,
        features,
    };
    let params = f64_params(1);
    F::new(&cfg, input.in_dim(), params.var_builder(DType::F64, &Device::Cpu)).unwrap();
    let names: Vec<String> = params.vars().into_iter().map(|(n, _)| n).collect();
    let start: Vec<Tensor> = params.vars().into_iter().map(|(_, v)| v.as_tensor().clone()).collect();
    gradcheck::check(
        |ws| model_step_with(&names, ws, &input, &target, &mut Rng::new(9)),
        &start,
    )
    .unwrap();
}

/// The model's loss as a function of explicit weight tensors (so the checker
/// can perturb them): the same maths as `Gae::step` / `Vgae::step`.
fn model_step_with(
    names: &[String],
    ws: &[Tensor],
    input: &GraphInput,
    target: &ReconTarget,
    rng: &mut Rng,
) -> candle_core::Result<Tensor> {
    let w = |n: &str| ws[names.iter().position(|x| x == n).unwrap()].clone();
    let h = aezoo_nn::ops::relu(&input.adj.matmul(&input.features.matmul(&w("encoder.hidden.weight"))?)?)?;
    let mu = input.adj.matmul(&h.matmul(&w("encoder.mean.weight"))?)?;
    if !names.iter().any(|n| n == "encoder.log_std.weight") {
        return recon_loss(&mu, target);
    }
    let ls = input.adj.matmul(&h.matmul(&w("encoder.log_std.weight"))?)?;
    let eps = rng.randn(mu.shape(), mu.dtype(), mu.device())?;
    let z = (&mu + (eps * ls.exp()?)?)?;
    recon_loss(&z, target)? + vgae_kl(&mu, &ls)?
}

#[test]
fn whole_models_gradient_check_and_step_agrees_with_the_written_out_maths() {
    check_model::<Gae>(true);
    check_model::<Vgae>(true);
    check_model::<Gae>(false);

    // The models' own step computes exactly the written-out function.
    let mut g = small_graph();
    g.features = Some(parse_features("0 2\n1\n\n3 4\n0\n2 4\n1 3\n", "f").unwrap());
    let input = GraphInput::new(&g, &EDGES[..6], true);
    let target = ReconTarget::new(N, &EDGES[..6]);
    let cfg = GaeConfig {
        hidden: 4,
        latent: 3,
        features: true,
    };
    let params = f64_params(2);
    let m = Vgae::new(&cfg, input.in_dim(), params.var_builder(DType::F64, &Device::Cpu)).unwrap();
    let names: Vec<String> = params.vars().into_iter().map(|(n, _)| n).collect();
    let ws: Vec<Tensor> = params.vars().into_iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let a = m
        .step(&input, &target, &mut Rng::new(5), true)
        .unwrap()
        .loss
        .to_scalar::<f64>()
        .unwrap();
    let b = model_step_with(&names, &ws, &input, &target, &mut Rng::new(5))
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    assert_eq!(m.encode(&input).unwrap().dims(), &[N, 3]);
}

#[test]
fn edge_logits_are_inner_products() {
    let z = pinned_z();
    let got = edge_logits(&z, &[(0, 1), (3, 3)]).unwrap();
    let want = (
        row(&z, 0).iter().zip(row(&z, 1)).map(|(a, b)| a * b).sum::<f64>(),
        row(&z, 3).iter().map(|a| a * a).sum::<f64>(),
    );
    assert_close(&got, &[want.0, want.1], 1e-15);
}

#[test]
fn bad_model_configs_are_errors() {
    let params = f64_params(0);
    let cfg = GaeConfig {
        hidden: 0,
        latent: 16,
        features: true,
    };
    let e = Gae::new(&cfg, 10, params.var_builder(DType::F64, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hidden (0)"), "{e}");
}
