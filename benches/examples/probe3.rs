use siren_benches::fixture;
use siren_engine::format::{Block, Cols, EntryView, Segment};
use std::time::Instant;
fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name}: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
fn main() {
    let f = fixture(1, 100_000, 100_000, 128);
    let segdir = f.dir.path().join("segments");
    let p = std::fs::read_dir(&segdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let id = u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let seg = Segment::open(&p, id).unwrap();
    let v: EntryView = seg.entry(0).unwrap();
    println!("blocks {} dict {}", v.n_blocks(), v.header.n_dict);
    let mut b = Block::default();
    let mut s = Vec::new();
    time("parse entry", 2000, || {
        seg.entry(0).unwrap();
    });
    for (name, c) in [
        ("time", Cols::TIME),
        ("item", Cols::ITEM),
        (
            "action",
            Cols {
                time: false,
                item: false,
                action: true,
                domain: false,
            },
        ),
        (
            "domain",
            Cols {
                time: false,
                item: false,
                action: false,
                domain: true,
            },
        ),
        ("all", Cols::ALL),
    ] {
        time(&format!("decode block {name}"), 2000, || {
            v.decode_block(37, c, &mut b, &mut s).unwrap();
        });
    }
    time("decode block all, fresh buffers", 2000, || {
        let mut b = Block::default();
        let mut s = Vec::new();
        v.decode_block(37, Cols::ALL, &mut b, &mut s).unwrap();
    });
    let st = f.db.stats();
    println!("{:?}", st.live);
}
