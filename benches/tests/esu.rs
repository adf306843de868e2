//! The ESU benchmark's fixture: its two forwards agree, and the PyTorch / ONNX Runtime script
//! either measures the exported network (after reproducing candle's probabilities) or says why
//! it did not (a machine without torch must still complete the comparison).

use siren_benches::esu::{bench_python, esu_fixture, time_all, NotRun};

#[test]
fn fixture_forwards_agree_and_the_python_comparison_answers() {
    let f = esu_fixture(12, 7, 16, 3);
    let (want, got) = (f.candle_probs(), f.fused_probs());
    assert_eq!(want.len(), 12);
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let dir = tempfile::tempdir().unwrap();
    let json = f.export(dir.path()).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["candle_probs"].as_array().unwrap().len(), 12);
    assert!(doc["params"]["recent_att.0.weight"]["data"].is_array());

    let t = time_all(&f, &bench_python(), dir.path(), 2, 3).unwrap();
    assert_eq!((t.rounds, t.candle.runs, t.fused.runs), (2, 6, 6));
    match t.python {
        Ok(p) => {
            assert_eq!((p.torch.runs, p.onnx.runs), (6, 6));
            assert_eq!(p.torch_round_ratios.len(), 2);
            assert!(p.ready.torch_max_diff < 1e-4 && p.ready.onnx_max_diff < 1e-4);
            assert!(p.torch.p50 > 0.0 && p.onnx.p50 > 0.0);
        }
        Err(NotRun::Skipped(why)) => {
            eprintln!("PyTorch / ONNX Runtime skipped: {why}");
            assert!(!why.is_empty());
        }
        Err(NotRun::Failed(error)) => panic!("torch_esu.py failed: {error}"),
    }
}

#[test]
fn a_python_that_cannot_start_is_a_skip_not_a_failure() {
    let f = esu_fixture(3, 2, 8, 1);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-python");
    let t = time_all(&f, &missing, dir.path(), 1, 1).unwrap();
    assert!(
        matches!(t.python, Err(NotRun::Skipped(_))),
        "{:?}",
        t.python
    );
}
