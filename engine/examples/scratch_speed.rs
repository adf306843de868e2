// SCRATCH, not committed: engine-only timings on a 100,000-event user (synthetic, clustered).
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, ReadRange, SemId};
use std::time::Instant;

fn p50(mut f: impl FnMut()) -> f64 {
    f();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 30 || (start.elapsed().as_secs_f64() < 1.5 && t.len() < 5000) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2] * 1e6
}

fn main() {
    let dim = 64;
    let n_items = 100_000usize;
    let mut rng = StdRng::seed_from_u64(7);
    let mut clusters: Vec<Vec<usize>> = vec![Vec::new(); 64];
    let items: Vec<Item> = (0..n_items)
        .map(|i| {
            let c = rng.random_range(0..64usize);
            let s = rng.random_range(0..8u16);
            clusters[c].push(i);
            Item {
                id: i as u64 * 7 + 1,
                category: c as u32,
                semid: Some(SemId::new(&[c as u16, s, ((i * 31 + 14) % 256) as u16]).unwrap()),
                embedding: Some(
                    (0..dim)
                        .map(|d| ((c * 7 + d) % 13) as f32 - 6.0 + rng.random::<f32>())
                        .collect(),
                ),
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        embedding_dim: dim as u32,
        auto_compact: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    db.upsert_items(&items, Durability::Unlogged).unwrap();
    let global = Zipf::new(n_items as f64, 1.05).unwrap();
    let interests = [3usize, 17, 40];
    let mut t = 1_600_000_000_000i64;
    let evs: Vec<Event> = (0..100_000)
        .map(|_| {
            t += if rng.random_bool(0.02) {
                rng.random_range(3_600_000..86_400_000)
            } else {
                rng.random_range(1_000..180_000)
            };
            let idx = if rng.random_bool(0.7) {
                let m = &clusters[interests[rng.random_range(0..3)]];
                m[Zipf::new(m.len() as f64, 1.05).unwrap().sample(&mut rng) as usize - 1]
            } else {
                global.sample(&mut rng) as usize - 1
            };
            Event {
                user: 1,
                ts: t,
                item: items[idx].id,
                action: u8::from(rng.random_bool(0.1)),
                domain: u16::from(rng.random_bool(0.1)),
            }
        })
        .collect();
    for c in evs.chunks(50_000) {
        db.append(
            c,
            &AppendOptions {
                durability: Durability::Unlogged,
                source: None,
            },
        )
        .unwrap();
    }
    db.compact().unwrap();
    let targets: Vec<&Item> = (0..20).map(|i| &items[(i * 997) % n_items]).collect();
    let mid = evs[50_000].ts;
    let run = |label: &str, db: &Db| {
        let snap = db.snapshot();
        let n = targets.len() as f64;
        let read = p50(|| {
            std::hint::black_box(snap.read(1, ReadRange::all()).unwrap());
        });
        let hard = p50(|| {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_hard(1, x.semid.as_ref().unwrap(), 50, None)
                        .unwrap(),
                );
            }
        }) / n;
        let hard_mid = p50(|| {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_hard(1, x.semid.as_ref().unwrap(), 50, Some(mid))
                        .unwrap(),
                );
            }
        }) / n;
        let soft = p50(|| {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_soft(1, x.embedding.as_ref().unwrap(), 50, None)
                        .unwrap(),
                );
            }
        }) / n;
        let embs: Vec<Vec<f32>> = (0..100)
            .map(|i| items[(i * 991) % n_items].embedding.clone().unwrap())
            .collect();
        let soft100 = p50(|| {
            std::hint::black_box(snap.retrieve_soft_batch(1, &embs, 50, None).unwrap());
        });
        println!("{label}: read {read:.1} us | hard {hard:.2} us | hard as_of mid {hard_mid:.2} us | soft {soft:.1} us | soft batch 100 {soft100:.0} us ({:.1} us/target)", soft100 / 100.0);
    };
    if std::env::var("HARD_ONLY").is_ok() {
        let snap = db.snapshot();
        for _ in 0..100000 {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_hard(1, x.semid.as_ref().unwrap(), 50, None)
                        .unwrap(),
                );
            }
        }
        return;
    }
    if std::env::var("SOFT_ONLY").is_ok() {
        let snap = db.snapshot();
        for _ in 0..300 {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_soft(1, x.embedding.as_ref().unwrap(), 50, None)
                        .unwrap(),
                );
            }
        }
        return;
    }
    if std::env::var("COLD_HARD").is_ok() {
        drop(db);
        let cold = Db::open(
            dir.path(),
            Options {
                cache_bytes: 0,
                ..opts
            },
        )
        .unwrap();
        let snap = cold.snapshot();
        for _ in 0..300 {
            for x in &targets {
                std::hint::black_box(
                    snap.retrieve_hard(1, x.semid.as_ref().unwrap(), 50, None)
                        .unwrap(),
                );
            }
        }
        return;
    }
    run("cache on ", &db);
    let distinct: std::collections::HashSet<u64> = evs.iter().map(|e| e.item).collect();
    let fb = distinct.len() * dim + evs.len() * 4;
    let src = vec![1u8; fb];
    let mut dst = vec![0u8; fb];
    let floor = p50(|| {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(dst[fb / 2]);
    });
    println!("soft floor {floor:.1} us ({} distinct)", distinct.len());
    drop(db);
    let cold = Db::open(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..opts
        },
    )
    .unwrap();
    run("cache off", &cold);
}
