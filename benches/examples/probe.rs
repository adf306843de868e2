use siren_benches::fixture;
use siren_engine::ReadRange;
use std::time::Instant;
fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name}: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
fn main() {
    let f = fixture(1, 100_000, 100_000, 128);
    let snap = f.db.snapshot();
    let u = f.users[0];
    let h = snap.read(u, ReadRange::all()).unwrap();
    let t = &f.catalog.items[997];
    let s = t.semid.unwrap();
    let own = f
        .catalog
        .items
        .iter()
        .find(|i| i.id == h[99_000].item)
        .unwrap()
        .semid
        .unwrap();
    for (name, sem) in [("catalog target", s), ("own recent item", own)] {
        for k in [1usize, 10, 50] {
            let hits = snap.retrieve_hard(u, &sem, k, None).unwrap();
            let depths: Vec<u8> = hits.iter().map(|x| x.depth).collect();
            let blocks: std::collections::BTreeSet<u32> =
                hits.iter().map(|x| x.position / 1024).collect();
            time(
                &format!(
                    "{name} k={k} ({} blocks, depths {:?}...)",
                    blocks.len(),
                    &depths[..depths.len().min(5)]
                ),
                200,
                || {
                    snap.retrieve_hard(u, &sem, k, None).unwrap();
                },
            );
        }
    }
    time("read last 50", 200, || {
        snap.read(
            u,
            ReadRange {
                last: Some(50),
                ..Default::default()
            },
        )
        .unwrap();
    });
    time("user_len", 200, || {
        snap.user_len(u, None).unwrap();
    });
}
