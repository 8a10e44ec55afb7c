//! `aezoo check-device` on the CPU (its plumbing and the f64 gradient
//! check, the CPU set against itself) and the device flag's errors; the GPU
//! run itself is scripts/gpu/check.sh on a lent machine.

use super::*;

#[test]
fn check_device_runs_the_f64_gradient_check_and_writes_its_report() {
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("check.json");
    let o = aezoo(
        d.path(),
        &[
            "check-device",
            "--device",
            "cpu",
            "--entries",
            "ae-conv,video-ae-small",
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rows = r["entries"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["pass"], true, "{row}");
        assert_eq!(row["loss_rel"], 0.0, "{row}");
        assert!(row["grads"].as_u64().unwrap() > 0, "{row}");
    }
    // ae-conv's loss is smooth at this point: the analytic directional
    // derivative equals the central difference; video-ae-small's quantiser
    // is straight-through, which the check must notice rather than pass.
    let fd = |i: usize| &rows[i]["fd_f64_directional"];
    assert_eq!(fd(0)["smooth"], true);
    assert!(fd(0)["rel"].as_f64().unwrap() < 1e-6, "{}", fd(0));
    assert_eq!(fd(1)["smooth"], false);
    assert!(fd(1)["rel"].as_f64().unwrap() > 1e-3, "{}", fd(1));
}

#[test]
fn a_gpu_this_build_lacks_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    for args in [
        &["check-device", "--device", "cuda", "--entries", "ae-conv"][..],
        &["bench", "ae-conv", "--steps", "1", "--device", "cuda"][..],
        &["max-batch", "ae-conv", "--device", "cuda"][..],
        &["check-device", "--device", "tpu"][..],
    ] {
        let o = aezoo(d.path(), args);
        assert_one_line_error(&o, &["--device"]);
    }
}
