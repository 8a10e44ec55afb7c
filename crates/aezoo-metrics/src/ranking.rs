//! Ranking metrics of a binary classifier's scores, computed exactly (no
//! threshold grid), with tied scores handled as scikit-learn does:
//! `roc_auc` = the trapezoidal area under the ROC curve = the Mann–Whitney
//! probability that a positive outranks a negative, ties counting ½;
//! `average_precision` = Σ_k (R_k − R_{k−1}) · P_k over the distinct score
//! thresholds in decreasing order (no interpolation).

/// Positions of `scores` in decreasing order, NaN refused.
fn order_desc(scores: &[f64]) -> Option<Vec<usize>> {
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    Some(idx)
}

/// Groups of equal score, in decreasing order: `(positives, negatives)` per group.
fn tie_groups(scores: &[f64], labels: &[bool]) -> Option<Vec<(usize, usize)>> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let idx = order_desc(scores)?;
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut last: Option<f64> = None;
    for i in idx {
        if last != Some(scores[i]) {
            groups.push((0, 0));
            last = Some(scores[i]);
        }
        let g = groups.last_mut().expect("a group was pushed");
        if labels[i] {
            g.0 += 1;
        } else {
            g.1 += 1;
        }
    }
    Some(groups)
}

/// Area under the ROC curve; `None` when a class is missing or a score is NaN.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let groups = tie_groups(scores, labels)?;
    let p: usize = groups.iter().map(|g| g.0).sum();
    let n: usize = groups.iter().map(|g| g.1).sum();
    if p == 0 || n == 0 {
        return None;
    }
    // Every positive above a negative counts 1, a tie ½.
    let mut negatives_below = n as f64;
    let mut wins = 0f64;
    for &(gp, gn) in &groups {
        negatives_below -= gn as f64;
        wins += gp as f64 * (negatives_below + 0.5 * gn as f64);
    }
    Some(wins / (p as f64 * n as f64))
}

/// Average precision; `None` when there is no positive or a score is NaN.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let groups = tie_groups(scores, labels)?;
    let p: usize = groups.iter().map(|g| g.0).sum();
    if p == 0 {
        return None;
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut ap = 0f64;
    for &(gp, gn) in &groups {
        tp += gp;
        fp += gn;
        if gp > 0 {
            ap += (gp as f64 / p as f64) * (tp as f64 / (tp + fp) as f64);
        }
    }
    Some(ap)
}
