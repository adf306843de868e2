//! The ESU benchmark's fixture: its two forwards agree, and the PyTorch / ONNX Runtime script
//! either measures the exported network or says why it did not (this machine may have no
//! torch: the comparison must still complete).

use siren_benches::esu::{esu_fixture, torch_esu, Python};

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
    match torch_esu(&json, 1, 3) {
        Python::Measured {
            torch_p50_s,
            onnx_p50_s,
            max_diff,
            ..
        } => {
            assert!(torch_p50_s > 0.0 && onnx_p50_s > 0.0 && max_diff < 1e-4);
        }
        Python::Skipped { skipped } => {
            eprintln!("PyTorch / ONNX Runtime skipped: {skipped}");
            assert!(!skipped.is_empty());
        }
        Python::Failed { error } => panic!("torch_esu.py failed: {error}"),
    }
}
