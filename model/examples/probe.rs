//! Research probe: GAUC of hand-made features on a dataset's validation split.
use siren_model::dataset::DatasetDir;
use siren_model::features::{build_samples, ItemTable, Retrieval, SeqKind, NO_ROW};
use siren_model::metrics::gauc;

fn main() {
    let dir = DatasetDir::new(std::env::args().nth(1).expect("dataset dir"));
    let (db, meta, splits) = dir.open().unwrap();
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, meta.embedding_dim);
    let imps = &splits.valid;
    let spec = [(SeqKind::Recent, 50), (SeqKind::Retrieved(Retrieval::Category), 1000), (SeqKind::Retrieved(Retrieval::Hard), 50), (SeqKind::Retrieved(Retrieval::Soft), 50)];
    let set = build_samples(&snap, &items, imps, &spec, 2).unwrap();
    let users: Vec<u64> = imps.iter().map(|i| i.user).collect();
    let labels: Vec<f32> = imps.iter().map(|i| i.label).collect();
    let cat_of = |row: u32| if row == NO_ROW { u32::MAX } else { items.category[row as usize] };
    let mut f_recent = Vec::new();
    let mut f_cat = Vec::new();
    let mut f_hard = Vec::new();
    let mut f_hardlen = Vec::new();
    for i in 0..imps.len() {
        let tc = cat_of(set.target_row[i]);
        let r = set.seq(SeqKind::Recent, i).unwrap();
        f_recent.push(r.iter().filter(|t| t.row != NO_ROW && cat_of(t.row) == tc).count() as f32);
        f_cat.push(set.lens[1][i] as f32);
        let h = set.seq(SeqKind::Retrieved(Retrieval::Hard), i).unwrap();
        f_hard.push(h.iter().map(|t| t.depth as f32).sum::<f32>());
        f_hardlen.push(set.lens[2][i] as f32);
    }
    for (name, f) in [("recent50 same category", &f_recent), ("category matches (<=1000)", &f_cat), ("hard depth sum", &f_hard), ("hard len", &f_hardlen)] {
        println!("{name}: valid GAUC {:.4}", gauc(&users, f, &labels).map_or(f64::NAN, |g| g.value));
    }
    let combo: Vec<f32> = f_recent.iter().zip(&f_cat).map(|(a, b)| (a / 50.0) * 1.5 + (b / 1000.0) * 4.0).collect();
    println!("combo: valid GAUC {:.4}", gauc(&users, &combo, &labels).map_or(f64::NAN, |g| g.value));
}
