//! The `siren` binary end to end: the demo (the README's run command) on a small scale, then
//! `inspect`, and `verify` before and after a byte of a segment file is flipped.

use std::process::Command;

fn siren(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_siren"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn demo_inspect_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let d = dir.to_str().unwrap();
    let args = [
        "demo",
        "--dir",
        d,
        "--users",
        "5",
        "--events",
        "300",
        "--lifelong-events",
        "3000",
        "--items",
        "2000",
        "--dim",
        "16",
    ];
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");
    assert!(out.contains("user 1: 3000 events"), "{out}");
    assert!(out.contains("hard (SemID prefix): 50 hits"), "{out}");
    assert!(out.contains("soft (cosine):       50 hits"), "{out}");
    // Running it again replaces the earlier demo.
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");

    let (ok, out) = siren(&["inspect", d]);
    assert!(ok && out.contains("events           4500"), "{out}");
    let (ok, out) = siren(&["verify", d]);
    assert!(ok && out.contains("ok"), "{out}");

    let seg = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let (ok, out) = siren(&["verify", d]);
    assert!(!ok, "verify must fail on a damaged file: {out}");
    assert!(
        out.contains("damaged") && out.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{out}"
    );

    // The demo refuses to replace a folder that is not a Siren database.
    let other = tmp.path().join("not-a-db");
    std::fs::create_dir(&other).unwrap();
    let (ok, out) = siren(&["demo", "--dir", other.to_str().unwrap()]);
    assert!(!ok && out.contains("not a Siren database"), "{out}");
}

#[test]
fn import_train_eval_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synthetic");
    let d = data.to_str().unwrap();
    let (ok, out) = siren(&[
        "import",
        "synthetic",
        "--out",
        d,
        "--users",
        "30",
        "--items",
        "1500",
        "--min-events",
        "300",
        "--max-events",
        "900",
        "--impressions-per-user",
        "12",
        "--dim",
        "16",
        "--codebook",
        "16",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("imported synthetic") && out.contains("ceiling"),
        "{out}"
    );
    // Importing over a non-empty directory is refused.
    let (ok, out) = siren(&["import", "synthetic", "--out", d, "--users", "2"]);
    assert!(!ok && out.contains("not empty"), "{out}");

    let ck = tmp.path().join("ck");
    let (ok, out) = siren(&[
        "train",
        "--data",
        d,
        "--model",
        "siren-hard",
        "--epochs",
        "1",
        "--out",
        ck.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(ck.join("model.safetensors").exists() && ck.join("config.json").exists());

    let rep = tmp.path().join("report");
    let (ok, out) = siren(&[
        "eval",
        "--data",
        d,
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let preds = std::fs::read_to_string(rep.join("predictions-ck.csv")).unwrap();
    assert!(preds.starts_with("user,item,timestamp,label,score\n"));
    let test_rows = std::fs::read_to_string(data.join("impressions.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("test,"))
        .count();
    assert_eq!(preds.lines().count(), test_rows + 1);
    assert!(rep.join("report.json").exists() && rep.join("report.png").exists());

    let cmp = tmp.path().join("cmp");
    let (ok, out) = siren(&[
        "compare",
        "--data",
        d,
        "--models",
        "no-seq,din",
        "--seeds",
        "1,2",
        "--epochs",
        "1",
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let md = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    assert!(md.contains("| no-seq |") && md.contains("| din |"), "{md}");
    assert!(cmp.join("compare.png").exists() && cmp.join("predictions/din-seed2.csv").exists());
    let (ok, out) = siren(&[
        "train",
        "--data",
        d,
        "--model",
        "nope",
        "--out",
        ck.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("unknown model"), "{out}");
}
