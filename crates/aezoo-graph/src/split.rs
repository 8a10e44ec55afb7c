//! The link-prediction split of Kipf & Welling (2016), as `mask_test_edges`
//! of the reference code builds it: the undirected edges are shuffled (seeded),
//! ⌊E/10⌋ become test edges, ⌊E/20⌋ validation edges and the rest (85 %)
//! the training graph; as many non-edges as test (and validation) edges are
//! sampled uniformly among node pairs that are not edges of the *full* graph,
//! without repeats and disjoint between the two sets.

use std::collections::HashSet;

use aezoo_nn::Rng;

use crate::data::Graph;

/// Train / validation / test edges and sampled non-edges, all as `(u, v)` with `u < v`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSplit {
    pub seed: u64,
    pub train: Vec<(u32, u32)>,
    pub val: Vec<(u32, u32)>,
    pub val_neg: Vec<(u32, u32)>,
    pub test: Vec<(u32, u32)>,
    pub test_neg: Vec<(u32, u32)>,
}

/// The RNG stream the split draws from (apart from initialisation's).
const SPLIT_STREAM: u64 = 0x5eed_ed6e;

impl EdgeSplit {
    /// The paper's split: 10 % test, 5 % validation.
    pub fn new(g: &Graph, seed: u64) -> Self {
        Self::with_fractions(g, seed, 0.05, 0.10)
    }

    /// Whether [`EdgeSplit::new`] can split `g`: at least one validation
    /// and one test edge, and non-edges enough to sample as many; the error
    /// names the graph's file, before any training.
    pub fn check(g: &Graph) -> Result<(), crate::GraphError> {
        let e = g.edges.len();
        let (n_test, n_val) = ((e as f64 * 0.10).floor() as usize, (e as f64 * 0.05).floor() as usize);
        let n = g.num_nodes as u64;
        let non_edges = (n * n.saturating_sub(1) / 2).saturating_sub(e as u64);
        if n_val == 0 || n_test == 0 || ((n_test + n_val) as u64) > non_edges {
            return Err(crate::GraphError::Invalid {
                file: g.source.clone(),
                msg: format!(
                    "{e} edges among {n} nodes: link prediction holds out 5 % of the edges for validation and 10 % for test, and as many non-edges; it needs at least 20 edges and that many non-edges"
                ),
            });
        }
        Ok(())
    }

    /// A split with other validation / test fractions (of the edge count, floored).
    pub fn with_fractions(g: &Graph, seed: u64, val_frac: f64, test_frac: f64) -> Self {
        let mut rng = Rng::derived(seed, SPLIT_STREAM);
        let e = g.edges.len();
        let n_test = (e as f64 * test_frac).floor() as usize;
        let n_val = (e as f64 * val_frac).floor() as usize;
        let perm = rng.permutation(e);
        let pick = |r: std::ops::Range<usize>| -> Vec<(u32, u32)> {
            let mut v: Vec<_> = perm[r].iter().map(|&i| g.edges[i]).collect();
            v.sort_unstable();
            v
        };
        let val = pick(0..n_val);
        let test = pick(n_val..n_val + n_test);
        let train = pick(n_val + n_test..e);

        let n = g.num_nodes as u64;
        let key = |u: u32, v: u32| u as u64 * n + v as u64;
        let edges: HashSet<u64> = g.edges.iter().map(|&(u, v)| key(u, v)).collect();
        let mut taken: HashSet<u64> = HashSet::new();
        let non_edges = n * (n - 1) / 2 - edges.len() as u64;
        assert!(
            (n_test + n_val) as u64 <= non_edges,
            "the graph has too few non-edges to sample from"
        );
        let mut sample = |count: usize| {
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let i = rng.below(n) as u32;
                let j = rng.below(n) as u32;
                if i == j {
                    continue;
                }
                let (u, v) = (i.min(j), i.max(j));
                let k = key(u, v);
                if edges.contains(&k) || !taken.insert(k) {
                    continue;
                }
                out.push((u, v));
            }
            out.sort_unstable();
            out
        };
        let test_neg = sample(n_test);
        let val_neg = sample(n_val);
        Self {
            seed,
            train,
            val,
            val_neg,
            test,
            test_neg,
        }
    }
}
