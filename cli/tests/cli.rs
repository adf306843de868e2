//! The `siren` binary end to end: the demo (the README's run command) on a small scale, then
//! `inspect`, and `verify` before and after a byte of a segment file is flipped.

use std::path::{Path, PathBuf};
use std::process::Command;

mod small_demo;
use small_demo::SMALL_DEMO;

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
    let mut args = vec!["demo", "--dir", d, "--no-serve"];
    args.extend(SMALL_DEMO);
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");
    for want in [
        "1. data: 2000 items (16-d embeddings), 12 users",
        "2. model: siren-hard-ctr trained",
        "hard (SemID prefix): 50 hits",
        "soft (cosine):       50 hits",
        "score 100 candidates, Hard GSU",
        "score 100 candidates, Soft GSU",
        "siren serve --config",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert!(dir.join("siren.toml").exists() && dir.join("model/config.json").exists());
    // Running it again replaces the earlier demo.
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");

    let (ok, out) = siren(&["inspect", d]);
    assert!(ok && out.contains("users            12"), "{out}");
    let (ok, out) = siren(&["verify", d]);
    assert!(
        ok && out.contains("codebook") && out.contains("model") && out.contains("ok"),
        "{out}"
    );

    let seg = std::fs::read_dir(dir.join("data/db/segments"))
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
    // A damaged model file is found too.
    let w = dir.join("model/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let (ok, out) = siren(&["verify", d]);
    assert!(!ok && out.contains("model.safetensors"), "{out}");

    // The demo refuses to replace a folder that is not a demo.
    let other = tmp.path().join("not-a-demo");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.txt"), "keep me").unwrap();
    let (ok, out) = siren(&["demo", "--dir", other.to_str().unwrap()]);
    assert!(!ok && out.contains("not a Siren demo folder"), "{out}");
    assert!(other.join("precious.txt").exists());
}

/// `siren serve` from a configuration file, overridden by a flag, stopped by SIGTERM.
#[test]
fn serve_reads_its_config_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("siren.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:1\"\ndb = {:?}\n[limits]\nmax_candidates = 7\n",
            tmp.path().join("db").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_siren"))
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .env("SIREN_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // No token configured: loopback only, and it says so.
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(log.contains("loopback"), "{log}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let body = r#"{"user": 1, "candidates": [1, 2, 3, 4, 5, 6, 7, 8]}"#;
    write!(
        s,
        "POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 422") && resp.contains("too_many"),
        "{resp}"
    );
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `siren compare` with one epoch per run into `out`, which must succeed; returns compare.md.
fn compare_one_epoch(data: &str, models: &str, seeds: &str, out: &Path) -> String {
    let (ok, printed) = siren(&[
        "compare",
        "--data",
        data,
        "--models",
        models,
        "--seeds",
        seeds,
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{printed}");
    std::fs::read_to_string(out.join("compare.md")).unwrap()
}

/// `siren train` (one epoch) into `root/ck`, then `siren eval` into `root/report`; both must
/// succeed. Returns the two directories and what eval printed.
fn train_then_eval(data: &str, model: &str, root: &Path) -> (PathBuf, PathBuf, String) {
    let ck = root.join("ck");
    let (ok, out) = siren(&[
        "train",
        "--data",
        data,
        "--model",
        model,
        "--epochs",
        "1",
        "--out",
        ck.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let rep = root.join("report");
    let (ok, out) = siren(&[
        "eval",
        "--data",
        data,
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    (ck, rep, out)
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

    let (ck, rep, _) = train_then_eval(d, "siren-hard", tmp.path());
    assert!(ck.join("model.safetensors").exists() && ck.join("config.json").exists());
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
    let md = compare_one_epoch(d, "no-seq,din", "1,2", &cmp);
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

/// `siren import synthetic` of 60 users with 300 to 600 events over 1,500 items of 16
/// dimensions into `out`, with `extra` arguments.
fn import_small_synthetic(out: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "import",
        "synthetic",
        "--out",
        out,
        "--users",
        "60",
        "--items",
        "1500",
        "--min-events",
        "300",
        "--max-events",
        "600",
        "--dim",
        "16",
        "--codebook",
        "16",
    ];
    args.extend(extra);
    siren(&args)
}

#[test]
fn multi_domain_import_compare_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("md");
    let d = data.to_str().unwrap();
    let import = |out: &str, shares: &str| {
        import_small_synthetic(
            out,
            &["--impressions-per-user", "30", "--domain-shares", shares],
        )
    };
    let bad = tmp.path().join("bad");
    let (ok, out) = import(bad.to_str().unwrap(), "0.9,-0.1");
    assert!(!ok && out.contains("--domain-shares"), "{out}");
    let (ok, out) = import(d, "0.7,0.2,0.1");
    assert!(ok && out.contains("test_gauc_tail"), "{out}");
    let csv = std::fs::read_to_string(data.join("impressions.csv")).unwrap();
    assert!(csv.starts_with("split,user,item,ts,label,domain\n"));
    assert!(csv.lines().any(|l| l.ends_with(",2")), "domain 2 present");

    let md = compare_one_epoch(d, "din,din+crocodile-m2", "1", &tmp.path().join("cmp"));
    assert!(
        md.contains("## GAUC per domain")
            && md.contains("| din+crocodile-m2 |")
            && md.contains("table1.item.weight"),
        "{md}"
    );

    let (_, rep, out) = train_then_eval(d, "din+mmoe-m2", tmp.path());
    assert!(out.contains("GAUC by domain (head 0)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    assert_eq!(report[0]["domains"].as_array().unwrap().len(), 3);
    assert!(report[0]["tail"]["gauc"].as_f64().is_some());
}

#[test]
fn import_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let items = tmp.path().join("items.jsonl");
    let events = tmp.path().join("events.jsonl");
    let mut it = String::new();
    for i in 0..20u64 {
        let e: Vec<String> = (0..4)
            .map(|k| format!("{}", ((i * 7 + k) % 5) as f32 - 2.0))
            .collect();
        it.push_str(&format!(
            "{{\"id\": {i}, \"category\": {}, \"semid\": [{}, {}], \"embedding\": [{}]}}\n",
            i % 3,
            i % 4,
            i % 2,
            e.join(", ")
        ));
    }
    std::fs::write(&items, it).unwrap();
    let ev: String = (0..500)
        .map(|k| {
            format!(
                "{{\"user\": {}, \"ts\": {k}, \"item\": {}, \"action\": 1}}\n",
                k % 3,
                k % 20
            )
        })
        .collect();
    std::fs::write(&events, format!("{ev}\n")).unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec![
            "import",
            "jsonl",
            "--db",
            db.to_str().unwrap(),
            "--dim",
            "4",
            "--levels",
            "2",
            "--codebook-size",
            "4",
            "--batch",
            "64",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        siren(&refs)
    };
    let (ok, out) = run(args(&[
        "--items",
        items.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]));
    assert!(ok, "{out}");
    assert!(
        out.contains("items: 20 stored") && out.contains("events: 500 stored"),
        "{out}"
    );
    let (ok, out) = siren(&["inspect", db.to_str().unwrap()]);
    assert!(
        ok && out.contains("events           500") && out.contains("users            3"),
        "{out}"
    );
    // A bad line names its file and line.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"user\": 1, \"ts\": 5, \"item\": 1}\n{\"user\": 1, \"ts\": \"x\", \"item\": 1}\n",
    )
    .unwrap();
    let (ok, out) = run(args(&["--events", bad.to_str().unwrap()]));
    assert!(!ok && out.contains("bad.jsonl:2"), "{out}");
}

/// `siren export taobao` writes joined shards that `siren import taobao` reads back, with the
/// same split sizes; a folder in neither layout, and as-of histories in the six tables, are refused.
#[test]
fn export_then_import_taobao() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (syn, tb, back) = (p("synthetic"), p("tb"), p("back"));
    let small = ["--dim", "16", "--codebook", "16", "--levels", "2"];
    let mut args = vec!["import", "synthetic", "--out", &syn, "--lifelong"];
    args.extend(["--users", "40", "--items", "500", "--min-events", "60"]);
    args.extend(["--max-events", "60"]);
    args.extend(small);
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");
    let sizes = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("imported "))
            .and_then(|l| l.split_once(": "))
            .map(|(_, s)| s.to_string())
            .unwrap()
    };
    let native = sizes(&out);

    let (ok, out) = siren(&[
        "export", "taobao", "--data", &syn, "--out", &tb, "--shards", "2",
    ]);
    assert!(ok && out.contains("\"test_samples\""), "{out}");
    assert!(tmp
        .path()
        .join("tb/train/train-shard-00001.parquet")
        .exists());
    let mut args = vec!["import", "taobao", "--dir", &tb, "--out", &back];
    args.extend(&small[2..]); // SemID flags; the dimension comes from the embeddings
    let (ok, out) = siren(&args);
    assert!(ok, "{out}");
    assert_eq!(sizes(&out), native);
    let (ok, out) = siren(&["verify", &back]);
    assert!(ok, "{out}");

    let (ok, out) = siren(&["import", "taobao", "--dir", &syn, "--out", &p("x")]);
    assert!(!ok && out.contains("neither the six tables"), "{out}");
    let as_of_tables = ["--out", &p("t"), "--histories", "as-of"];
    let (ok, out) = siren(&[&["export", "taobao", "--data", &syn][..], &as_of_tables].concat());
    assert!(!ok && out.contains("need the shard layout"), "{out}");
}

/// `--w-quality 0` plants clicks that only the interests explain: every ceiling is then the
/// same (nothing is left for item labels to reveal); with quality, the Bayes ceilings lie
/// between the interests-only one and the planted one. A weight that is not a finite number
/// is refused.
#[test]
fn import_synthetic_with_and_without_item_quality() {
    let tmp = tempfile::tempdir().unwrap();
    let ceiling = |name: &str, extra: &[&str]| {
        let out_dir = tmp.path().join(name);
        let (ok, out) = import_small_synthetic(out_dir.to_str().unwrap(), extra);
        assert!(ok, "{out}");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("dataset.json")).unwrap())
                .unwrap();
        let c = &meta["details"]["ceiling"];
        let get = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k} in {c}"));
        [
            get("test_gauc"),
            get("test_gauc_bayes"),
            get("test_gauc_bayes_train"),
            get("test_gauc_without_quality"),
        ]
    };
    let [planted, bayes, bayes_train, interests] = ceiling("q0", &["--w-quality", "0"]);
    assert!([bayes, bayes_train, interests]
        .iter()
        .all(|&g| g == planted));
    let [planted, bayes, bayes_train, interests] = ceiling("q", &["--w-quality", "2"]);
    assert!(interests < bayes_train && bayes_train <= bayes + 0.01 && bayes < planted);
    let bad = tmp.path().join("bad");
    let (ok, out) = siren(&[
        "import",
        "synthetic",
        "--out",
        bad.to_str().unwrap(),
        "--w-quality",
        "nan",
    ]);
    assert!(!ok && out.contains("finite"), "{out}");
}
