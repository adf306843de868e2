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
